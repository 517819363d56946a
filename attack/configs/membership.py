"""Identity membership attack against a generator, from wherever it was trained.

  # A gmia-trained generator and its own split (members vs non-members: the ROC):
  python -m attack.membership --workdir=runs/attack \
      --config.generator=gmia:runs/demo/gan --config.matcher.path=runs/demo/face_encoder
  # Samples from any model, a real face matcher, photos of people in identity folders:
  python -m attack.membership --workdir=OUT --config.generator=images:samples/ \
      --config.matcher.path=sface.onnx --config.matcher.preset=sface --config.align=detect \
      --config.detector_onnx=face_detection_yunet_2023mar.onnx --config.targets_dir=people/ \
      --config.population_dir=lfw_people/ --config.num_samples=10000
  # An NVIDIA StyleGAN2-ADA pickle (FFHQ faces are aligned: a fixed crop suits them):
  python -m attack.membership --workdir=OUT --config.generator=stylegan2_pkl:ffhq.pkl \
      --config.matcher.path=w600k_r50.onnx --config.matcher.preset=arcface \
      --config.align=fixed "--config.align_box=(0.2,0.2,0.8,0.8)" \
      --config.targets_dir=people/ --config.population_dir=lfw_people/
"""

from gmia.jobs import membership


def get_config():
  return membership.default_config()
