"""Deterministic synthetic chest X-rays, written in the real on-disk dataset formats.

`synthesize(out_dir, spec)` writes four datasets that the real parsers read, and returns
for each the canonical tables a correct parser must produce (the ground truth of the
parser tests). The same spec gives byte-identical CSVs and identical pixel data.

Layout (paths in the returned `images.path` are relative to the format's directory):

    rsna/stage_2_train_labels.csv         patientId,x,y,width,height,Target
    rsna/stage_2_detailed_class_info.csv  patientId,class (one row per box, as Kaggle's)
    rsna/stage_2_train_images/<patientId>.dcm
    vinbigdata/train.csv                  image_id,class_name,class_id,rad_id,
                                          x_min,y_min,x_max,y_max
    vinbigdata/train/<image_id>.dicom
    nih/Data_Entry_2017.csv               the real header, bracketed names included
    nih/BBox_List_2017.csv                the real header `Image Index,Finding Label,
                                          Bbox [x,y,w,h],,,`
    nih/images/<8-digit patient>_<3-digit follow-up>.png
    folder/images/<image_id>.{png,jpg,dcm}
    folder/annotations.csv                image_id,x,y,width,height,label (pixels)
    folder/images.csv                     image_id,label,patient_id
    samples.png                           a few images per format with their boxes

Conventions the parsers follow (and the returned tables encode):

- RSNA: image_id = patientId; one box class, class_id 0 "Lung Opacity"; image label = the
  detailed class; image_labels = ["Normal", "No Lung Opacity / Not Normal", "Lung Opacity"];
  patient_id = patientId; sex/age/view from the DICOM header (PatientAge is a bare number
  string like "47", as in the Kaggle files).
- VinBigData: one box row per reader box (reader = rad_id); `No finding` (class 14) rows have
  empty box fields and give no box; class_names = the 14 finding names; image label
  "abnormal" if any reader marked a finding else "normal"; image_labels = ["normal",
  "abnormal"]; patient_id = image_id; width/height = DICOM Columns/Rows. Rows are shuffled
  as in the real file; a reader may miss a finding another reader marked (then, with no
  box left, that reader has a `No finding` row like in the real data).
- NIH: image_id = the PNG stem ("00000001_000"); patient_id = Patient ID as written ("1");
  width/height = the PNG size (NOT the OriginalImage[Width,Height] columns, which describe
  the pre-downscaling original as in the real file); label "abnormal"/"normal";
  image_labels = ["normal", "abnormal"]; class_names = NIH_FINDINGS; box class_id = index
  in NIH_FINDINGS. BBox_List spells Infiltration as "Infiltrate", as the real file does.
  targets = 15 int 0/1 columns (NIH_FINDINGS + "Abnormal") indexed like images.
- folder: image_id = file stem; class_names = sorted unique annotation labels;
  image_labels = sorted unique images.csv labels; images without annotation rows are
  negatives.

Box coordinates are integers, except NIH's (two decimals); the returned floats equal what
`float()` of the written text gives. Returned images follow file order; returned boxes
follow CSV row order (VinBigData rows are shuffled), so compare tables order-insensitively.

File details a reader must handle:

- NIH headers are the real ones: Data_Entry has 12 header fields (bracketed names split at
  their inner commas, plus a trailing empty one) over 11-field rows, so pandas reads columns
  "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]", "Unnamed: 11";
  BBox_List has 9 header fields over 6-field rows: "Bbox [x", "y", "w", "h]", "Unnamed: 6..8".
- VinBigData DICOMs cycle through VINBIG_VARIANTS: MONOCHROME1 and 2; 8, 12, 14 and 16 bits
  stored; Implicit and Explicit VR Little Endian; RLE Lossless; JPEG 2000 Lossless; JPEG
  Baseline (8-bit, lossy, as the real RSNA files use); Rescale Slope/Intercept; Window
  Center/Width spanning the stored range. Stored values use only part of the bit range.
  JPEG-LS is not written: pydicom has no JPEG-LS encoder without pyjpegls.
- RSNA DICOMs are 8-bit MONOCHROME2, Explicit VR Little Endian, Secondary Capture, with the
  Kaggle header (PatientID, PatientSex, PatientAge, ViewPosition, Modality CR, ...).
- folder images are 8-bit: PNG, JPEG (quality 95) and DICOM, cycling by index.
"""

from cxrdet.data.sources._csv import BINARY_LABELS
from cxrdet.data.sources.nih import BBOX_SPELLINGS as NIH_BBOX_SPELLING
from cxrdet.data.sources.nih import FINDINGS as NIH_FINDINGS
from cxrdet.data.sources.nih import TARGET_COLUMNS as NIH_TARGETS
from cxrdet.data.sources.rsna import IMAGE_LABELS as RSNA_LABELS
from cxrdet.data.sources.rsna import OPACITY as RSNA_BOX_CLASS
from cxrdet.data.sources.synthetic.anatomy import Anatomy, sample_anatomy
from cxrdet.data.sources.synthetic.chest import Chest, render_chest
from cxrdet.data.sources.synthetic.demo import synthesize
from cxrdet.data.sources.synthetic.encoding import DIGITAL_XRAY, SECONDARY_CAPTURE
from cxrdet.data.sources.synthetic.findings import FINDING_KINDS
from cxrdet.data.sources.synthetic.nih import NIH_BBOX_HEADER, NIH_BOXED, NIH_ENTRY_HEADER
from cxrdet.data.sources.synthetic.scene import Lesion
from cxrdet.data.sources.synthetic.shapes import Box
from cxrdet.data.sources.synthetic.spec import DemoSpec
from cxrdet.data.sources.synthetic.vinbigdata import VINBIG_NO_FINDING, VINBIG_VARIANTS
from cxrdet.data.sources.vinbigdata import CLASS_NAMES as VINBIG_CLASSES

__all__ = [
    "BINARY_LABELS",
    "DIGITAL_XRAY",
    "FINDING_KINDS",
    "NIH_BBOX_HEADER",
    "NIH_BBOX_SPELLING",
    "NIH_BOXED",
    "NIH_ENTRY_HEADER",
    "NIH_FINDINGS",
    "NIH_TARGETS",
    "RSNA_BOX_CLASS",
    "RSNA_LABELS",
    "SECONDARY_CAPTURE",
    "VINBIG_CLASSES",
    "VINBIG_NO_FINDING",
    "VINBIG_VARIANTS",
    "Anatomy",
    "Box",
    "Chest",
    "DemoSpec",
    "Lesion",
    "render_chest",
    "sample_anatomy",
    "synthesize",
]
