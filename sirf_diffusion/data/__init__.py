"""sirf_diffusion.data"""
