"""Models: timm backbones with one input channel, and the image classifier built on them."""
