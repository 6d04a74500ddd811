"""Text: radiology prompts -> typed specs, and captions from label maps."""
