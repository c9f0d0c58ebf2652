"""sirf_diffusion.integrations"""
