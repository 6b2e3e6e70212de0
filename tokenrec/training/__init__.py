"""Training loops: device selection, checkpoint/resume, progress bars. Model code lives in tokenrec.models."""
