"""Reading CT (DICOM, NIfTI) in Hounsfield units, slicing, and the synthetic CT corpus."""
