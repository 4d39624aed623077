"""RunInference model handlers, one module each: spacy.py (noun chunks), detector.py (zero-shot detectors),
florence2.py (Florence-2 phrase grounding); common.py holds their shared element contract and device handling,
dlq.py turns failed elements and batches into reject rows."""
