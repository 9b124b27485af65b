"""Pure-torch UNet block-level techniques (RAU-Net)."""
