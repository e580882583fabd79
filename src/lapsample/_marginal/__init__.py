"""Marginals: the log density that HMC samples, with the latent integrated out."""
