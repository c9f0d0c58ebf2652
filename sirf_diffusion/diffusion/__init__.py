"""sirf_diffusion.diffusion"""
