"""sirf_diffusion.recon"""
