"""Affinity labels, AffinityNet training, random walk and pseudo-mask making."""
