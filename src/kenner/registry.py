"""A tiny name -> factory registry, after timm's ``register_model`` / ``create_model``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from kenner.errors import KennerError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories. ``register("name")(factory)``; ``create("name", **kw)``; ``list()``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            return factory

        return decorator

    def create(self, name: str, **kwargs) -> T:
        if name not in self._factories:
            raise KennerError(f"unknown {self.kind} {name!r}; known: {', '.join(self.list())}")
        return self._factories[name](**kwargs)

    def __contains__(self, name: str) -> bool:
        return name in self._factories

    def list(self) -> list[str]:
        return sorted(self._factories)
