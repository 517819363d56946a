"""Models: Flax modules (StyleGAN2, IResNet, classifiers, decoders, latent encoder), the
split-network protocol, importers of other people's networks (NVIDIA pickles, ONNX split
networks) and the face-preprocessing presets."""
