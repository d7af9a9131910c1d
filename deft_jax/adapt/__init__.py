"""Phase 2: fine-tuning on the detected clean subset (FFT / PEFT / no adaptation / zero-shot), the robust
losses, the comparison selectors (label-match, small-loss, GMM) and evaluation. Entry point: ``train.run``."""
