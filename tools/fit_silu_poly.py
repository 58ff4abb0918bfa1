#!/usr/bin/env python3
"""Fits the polynomial of reidcam's SiLU (`SILU_POLY` in src/embed/kernels/mod.rs):

    e^s ≈ 1 + s·(a₁ + s·(a₂ + s·(a₃ + s·(a₄ + s·a₅))))   on |s| ≤ ln 2 / 2

for the least maximum relative error, by least squares reweighted towards the points of largest
error (Lawson's iteration), in float64; then evaluates the float32 coefficients in float32 the way
the kernels do (Horner, one rounding per step) and prints both errors in units of 2⁻²⁴.

    tools/.venv/bin/python tools/fit_silu_poly.py [--degree 5]
"""

import argparse

import numpy as np


def fit(degree: int, iterations: int = 300) -> np.ndarray:
    half = np.log(2.0) / 2.0
    s = np.cos(np.linspace(0.0, np.pi, 8001)) * half
    powers = np.stack([s**k for k in range(1, degree + 1)], axis=1)
    target = np.expm1(s)
    weights = np.exp(-s)  # relative error: (p − e^s) / e^s
    for _ in range(iterations):
        coeffs, *_ = np.linalg.lstsq(powers * weights[:, None], target * weights, rcond=None)
        error = np.abs(powers @ coeffs - target) * np.exp(-s)
        weights = weights * (1.0 + error / error.max())
        weights /= weights.max()
    return coeffs


def f32_error(coeffs: np.ndarray) -> float:
    half = np.log(2.0) / 2.0
    s = np.linspace(-half, half, 400001).astype(np.float32)
    a = coeffs.astype(np.float32)
    p = np.zeros_like(s)
    for c in a[::-1]:
        p = (p * s + c).astype(np.float32)
    e = (p * s + np.float32(1.0)).astype(np.float32)
    exact = np.exp(s.astype(np.float64))
    return float(np.max(np.abs(e.astype(np.float64) - exact) / exact) / 2.0**-24)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--degree", type=int, default=5)
    args = parser.parse_args()
    coeffs = fit(args.degree)
    half = np.log(2.0) / 2.0
    s = np.linspace(-half, half, 400001)
    powers = np.stack([s**k for k in range(1, args.degree + 1)], axis=1)
    exact = np.exp(s)
    fitted = float(np.max(np.abs(1.0 + powers @ coeffs - exact) / exact) / 2.0**-24)
    print(f"degree {args.degree}: max relative error {fitted:.2f} x 2^-24 (float64), "
          f"{f32_error(coeffs):.2f} x 2^-24 (float32 coefficients, float32 Horner)")
    for k, c in enumerate(coeffs.astype(np.float32), start=1):
        print(f"a{k} = {float(c)!r}  ({float(c).hex()})")


if __name__ == "__main__":
    main()
