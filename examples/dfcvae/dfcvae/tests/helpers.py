"""Helpers for the DFC-VAE example tests: a tiny CelebA-layout folder and a tiny training run."""
from pathlib import Path

import numpy as np

from dfcvae.celeba import DEFAULT_DATA

#: The shared CelebA subset (../shared/data/celeba beside the repository), where it exists.
SHARED_CELEBA = DEFAULT_DATA

ATTRS = ["5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
         "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
         "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
         "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
         "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
         "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young"]


def make_celeba(root: Path, n_images: int = 12, listed: int = 14, corrupt: tuple[int, ...] = (), size=(89, 109),
                seed: int = 0, splits=None) -> Path:
    """Write a CelebA-layout folder: ``listed`` ids in the annotation files, the first ``n_images`` as JPEGs
    (smooth random colour fields), the ids in ``corrupt`` as truncated files. Returns ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    img_dir = root / "img_align_celeba"
    img_dir.mkdir(parents=True)
    names = [f"{i + 1:06d}.jpg" for i in range(listed)]
    for i, name in enumerate(names[:n_images]):
        if i in corrupt:
            (img_dir / name).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
            continue
        small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        Image.fromarray(small).resize(size, Image.BILINEAR).save(img_dir / name, quality=90)
    attrs = rng.choice(["-1", " 1"], size=(listed, 40))
    with open(root / "list_attr_celeba.txt", "w") as f:
        f.write(f"{listed}\n" + " ".join(ATTRS) + "\n")
        for name, row in zip(names, attrs):
            f.write(name + " " + " ".join(row) + "\n")
    splits = splits or [0] * listed
    with open(root / "list_eval_partition.txt", "w") as f:
        f.writelines(f"{name} {s}\n" for name, s in zip(names, splits))
    with open(root / "identity_CelebA.txt", "w") as f:
        f.writelines(f"{name} {i // 3 + 1}\n" for i, name in enumerate(names))
    return root


def train_tiny(data_dir: Path, out: Path, *extra: str) -> int:
    """examples/dfcvae/train.py on a tiny CelebA folder: PVAE, batch 8, one log row per step."""
    from dfcvae import train

    return train.main(["--preset", "pvae", "--data", str(data_dir), "--out", str(out), "--batch-size", "8",
                       "--cache-dir", str(data_dir.parent / "cache"), "--workers", "1", "--no-progress",
                       "--log-every", "1", *extra])
