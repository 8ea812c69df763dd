"""Student model configs shipped with the package, and the frozen teacher."""
from .configs import MODEL_CONFIG_DIR, list_student_models, register_model_configs
