"""sirf_diffusion.io"""
