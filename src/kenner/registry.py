"""A tiny name -> item registry, after timm's ``register_model`` / ``create_model``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from kenner.errors import KennerError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to items (factories or specs): ``register("name")(item)``, ``get("name")``,
    ``create("name", **kw)`` (calls a factory), ``list()``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return decorator

    def get(self, name: str) -> T:
        if name not in self._items:
            raise KennerError(f"unknown {self.kind} {name!r}; known: {', '.join(self.list())}")
        return self._items[name]

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)  # type: ignore[operator]

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def list(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())
