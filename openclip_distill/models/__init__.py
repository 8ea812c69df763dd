"""Student model configs shipped with the package, and the frozen teacher."""
from .configs import MODEL_CONFIG_DIR, list_student_models, register_model_configs
from .blip_student import build_blip_student, build_blip_student_preset, list_blip_students, register_blip_student
