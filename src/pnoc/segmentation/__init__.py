"""DeepLabV3+ training on pseudo-masks, test-time augmentation and evaluation."""
