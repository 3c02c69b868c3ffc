"""vLLM's BaseModelLoader: the interface a registered loader implements."""

from abc import ABC, abstractmethod

import torch


class BaseModelLoader(ABC):
    def __init__(self, load_config):
        self.load_config = load_config

    @abstractmethod
    def download_model(self, model_config) -> None:
        raise NotImplementedError

    @abstractmethod
    def load_weights(self, model: torch.nn.Module, model_config) -> None:
        raise NotImplementedError

    def load_model(self, vllm_config, model_config) -> torch.nn.Module:
        model = vllm_config.model_factory()  # initialize_model(...)
        self.load_weights(model, model_config)
        return model.eval()
