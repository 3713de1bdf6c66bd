"""`mimic-data prepare {mimic-egd, malaria, folder}`: public dataset layouts -> HDF5 schema."""

from __future__ import annotations

import argparse

from mimic_runner.data.prepare._common import PrepareResult
from mimic_runner.log import stdout

_EPILOG = "Then check the file with `mimic-data info OUT` and train with `mimic-run data=%s " \
          "data.path=OUT`."


def _common(p: argparse.ArgumentParser, size: int) -> None:
    p.add_argument("--out", required=True, metavar="FILE", help="HDF5 file to write")
    p.add_argument("--size", type=int, default=size,
                   help=f"side of the square output images in pixels (default {size})")
    p.add_argument("--mode", choices=("resize", "pad"), default="resize",
                   help="resize: stretch to the square (default); pad: keep the aspect ratio, "
                        "scale the longer side and pad with zeros (letterbox)")
    p.add_argument("--val", type=float, default=0.15, help="validation fraction (default 0.15)")
    p.add_argument("--test", type=float, default=0.15, help="test fraction (default 0.15)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def _report(result: PrepareResult) -> None:
    for line in [*result.summary(), f"check it with: mimic-data info {result.path}"]:
        stdout.print(line, markup=False, highlight=False, soft_wrap=True)


def _mimic_egd(args: argparse.Namespace) -> None:
    from mimic_runner.data.prepare.mimic_egd import prepare_mimic_egd

    _report(prepare_mimic_egd(args.egd, args.images, args.out, size=args.size, mode=args.mode,
                              val=args.val, test=args.test, seed=args.seed, sigma=args.sigma,
                              outside=args.outside, overwrite=args.overwrite))


def _malaria(args: argparse.Namespace) -> None:
    from mimic_runner.data.prepare.malaria import prepare_malaria

    _report(prepare_malaria(args.root, args.out, size=args.size, mode=args.mode, val=args.val,
                            test=args.test, seed=args.seed, overwrite=args.overwrite))


def _folder(args: argparse.Namespace) -> None:
    from mimic_runner.data.prepare.folder import prepare_folder

    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    _report(prepare_folder(args.root, args.out, size=args.size, mode=args.mode,
                           channels=args.channels, heatmaps=args.heatmaps,
                           fixations=args.fixations, rois=args.rois, split_file=args.split_file,
                           classes=classes, val=args.val, test=args.test, seed=args.seed,
                           source=args.source, aligned=args.aligned, overwrite=args.overwrite))


def add_prepare_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add `prepare` with its sub-commands `mimic-egd`, `malaria` and `folder`."""
    prepare = subparsers.add_parser(
        "prepare", help="convert a public dataset layout into the HDF5 schema",
        description="Convert a public dataset layout into the HDF5 schema (atomic write).")
    sub = prepare.add_subparsers(dest="dataset", required=True, metavar="DATASET")

    p = sub.add_parser(
        "mimic-egd", help="PhysioNet Eye Gaze Data for Chest X-rays + MIMIC-CXR-JPG",
        description="MIMIC-EGD: master_sheet.csv + fixations.csv (--egd) and the MIMIC-CXR-JPG "
                    "images (--images). Grey images resized to SIZE, gaze = +1 per fixation "
                    "blurred by a Gaussian of SIGMA original pixels, fixations = fixated pixels; "
                    "split by patient_id. Rows without one hot class, image or fixations are "
                    "skipped and reported.", epilog=_EPILOG % "mimic_egd")
    p.add_argument("--egd", required=True, metavar="DIR",
                   help="egd-cxr/1.0.0 folder holding master_sheet.csv and fixations.csv")
    p.add_argument("--images", required=True, metavar="DIR",
                   help="MIMIC-CXR-JPG folder holding files/p1x/... (or files/ itself)")
    _common(p, 224)
    p.add_argument("--sigma", type=float, default=150.0,
                   help="Gaussian sigma in original pixels (default 150, as the EGD paper)")
    p.add_argument("--outside", choices=("error", "drop"), default="error",
                   help="a fixation outside its image (other than the release's negative "
                        "off-image marker): error (default) or drop and report")
    p.set_defaults(func=_mimic_egd)

    p = sub.add_parser(
        "malaria", help="NIH malaria cell images (cell_images/{Parasitized,Uninfected})",
        description="NIH malaria: RGB cells resized (or padded) to SIZE, split by the patient "
                    "prefix of the file name (C189P150ThinF_... -> C189P150). Thumbs.db and "
                    "a nested cell_images/cell_images duplicate are ignored.",
        epilog=_EPILOG % "malaria")
    p.add_argument("--root", required=True, metavar="DIR",
                   help="the unpacked cell_images folder (or its parent)")
    _common(p, 128)
    p.set_defaults(func=_malaria)

    p = sub.add_parser(
        "folder", help="a root/<class>/<image> tree with optional heatmaps/fixations/ROIs",
        description="Generic class-per-folder tree. Optional parallel trees matched by "
                    "relative path and stem: --heatmaps -> gaze, --fixations -> fixations "
                    "(non-zero pixels), --rois -> gaze (1 inside, 0 outside). Random split "
                    "stratified by class unless --split-file is given.",
        epilog=_EPILOG % "folder")
    p.add_argument("--root", required=True, metavar="DIR", help="folder of class folders")
    _common(p, 224)
    p.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="1 (grey) or 3 (RGB); default: 1 if every image is grey, else 3")
    p.add_argument("--heatmaps", metavar="DIR", help="grey heatmaps or .npy arrays -> gaze")
    p.add_argument("--fixations", metavar="DIR", help="fixation masks -> fixations")
    p.add_argument("--rois", metavar="DIR", help="region-of-interest masks -> gaze")
    p.add_argument("--split-file", metavar="CSV",
                   help="CSV with columns id (or path/file) and split (train/val/test or 0/1/2)")
    p.add_argument("--classes", metavar="A,B,...",
                   help="class folders to use, in label order (default: all, sorted)")
    p.add_argument("--source", default="folder", help="'source' attribute (default folder)")
    p.add_argument("--aligned", action="store_true",
                   help="mark the images as naturally aligned (needed for global explanations)")
    p.set_defaults(func=_folder)
