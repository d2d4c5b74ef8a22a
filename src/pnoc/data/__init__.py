"""Datasets: VOC-layout reader, COCO 2014 reader, synthetic generator, transforms."""
