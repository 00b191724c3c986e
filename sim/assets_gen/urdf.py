"""Tiny helpers to write URDF/SDF snippets with Drake's hydroelastic extensions.

Only string building and inertia formulas; no pydrake import (assets are generated offline
and loaded later by the station).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def fmt(v) -> str:
    """Space-separated floats with enough precision for metres/radians."""
    return " ".join(f"{float(x):.6g}" for x in np.atleast_1d(v))


@dataclass(frozen=True)
class Contact:
    """Proximity properties of one collision geometry.

    ``hydro`` is ``"compliant"``, ``"rigid"`` or ``None`` (point contact only).
    """

    mu: float = 0.8
    hydro: str | None = None
    modulus: float = 1e6
    resolution_hint: float | None = None
    dissipation: float = 5.0

    def drake_xml(self) -> str:
        return self._xml(urdf=True)

    def sdf_xml(self) -> str:
        """The same properties in SDFormat syntax (values as element text)."""
        return self._xml(urdf=False)

    def _xml(self, *, urdf: bool) -> str:
        # URDF carries values in a `value` attribute, SDFormat as element text.
        def tag(name: str, value: float) -> str:
            if urdf:
                return f'<drake:{name} value="{value:.6g}"/>'
            return f"<drake:{name}>{value:.6g}</drake:{name}>"

        parts = ["<drake:proximity_properties>"]
        if self.hydro == "compliant":
            parts.append("<drake:compliant_hydroelastic/>")
            parts.append(tag("hydroelastic_modulus", self.modulus))
            parts.append(tag("hunt_crossley_dissipation", self.dissipation))
        elif self.hydro == "rigid":
            parts.append("<drake:rigid_hydroelastic/>")
        if self.resolution_hint is not None:
            parts.append(tag("mesh_resolution_hint", self.resolution_hint))
        parts.append(tag("mu_dynamic", self.mu))
        parts.append(tag("mu_static", self.mu))
        parts.append("</drake:proximity_properties>")
        return "".join(parts)


def box_inertia(mass: float, size) -> np.ndarray:
    x, y, z = size
    return mass / 12.0 * np.diag([y * y + z * z, x * x + z * z, x * x + y * y])


def cylinder_inertia(mass: float, radius: float, length: float) -> np.ndarray:
    """About the centre, axis along z."""
    ixx = mass * (3 * radius**2 + length**2) / 12.0
    return np.diag([ixx, ixx, 0.5 * mass * radius**2])
