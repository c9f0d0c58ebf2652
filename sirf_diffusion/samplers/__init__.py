"""sirf_diffusion.samplers"""
