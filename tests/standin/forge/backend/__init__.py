# Stand-in for Forge main's `backend` package (lllyasviel/stable-diffusion-webui-forge @ dfdcbab6).
# Only the surfaces an extension touches: nn/unet.py, patcher/, sampling/, modules/k_prediction.py,
# modules/k_model.py, attention.py, diffusion_engine/base.py.
