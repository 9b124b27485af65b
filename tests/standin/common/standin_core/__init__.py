# Shared machinery of the WebUI stand-in (tests only). Not a mirror of one real file: the pieces that
# Forge main (lllyasviel/stable-diffusion-webui-forge @ dfdcbab685e57677014f05a3309b48cc87383167) and
# reForge (Panchovix/stable-diffusion-webui-reForge @ 3b56b268ad9158ee8b30900973b6ccda4ec22241) share,
# written once; each flavour's modules import them and pass their differences as parameters.
FORGE_COMMIT = "dfdcbab685e57677014f05a3309b48cc87383167"
REFORGE_COMMIT = "3b56b268ad9158ee8b30900973b6ccda4ec22241"
