"""Convert Pascal VOC, YOLO or LabelMe annotations to one COCO json that train.py reads as it is.

    python -m tools.convert voc  VOC2012/Annotations --out train.json [--ids VOC2012/ImageSets/Main/train.txt]
    python -m tools.convert yolo dataset/labels/train --out train.json --classes dataset/data.yaml
    python -m tools.convert labelme shots/ --out train.json [--classes classes.txt]

Then ``python train.py ... train_images=IMAGES train_annotations=train.json`` (the images folder
the command prints). Every problem is collected and listed as ``file:line: what`` (YOLO) or
``file: what``; with any, nothing is written and the exit code is 1.

Coordinates (COCO: continuous pixels, x from 0 at the left edge of the first pixel column):
- VOC corners are 1-based pixel indices, inclusive: xmin=1, xmax=10 covers the first 10
  pixel columns, the continuous span [0, 10]. So x = xmin - 1, y = ymin - 1,
  w = xmax - xmin + 1, h = ymax - ymin + 1 (the VOC devkit's convention; Detectron and
  mmdetection subtract 1 from xmin/ymin the same way).
- YOLO: normalised (cx, cy, w, h) times each image's size as stored on disk (header read):
  x = (cx - w / 2) * W, w = w * W.
- LabelMe: point coordinates are continuous already; a box is the min/max of the points.

Sizes are the image as stored (the training loader reads pixels without EXIF rotation, so
annotations and sizes are in stored pixels; images with an EXIF rotation get a warning).

Why not globox (a well-kept converter between these formats)? Checked with globox 2.9.0:
it reads VOC corners as continuous coordinates (xmin=1, xmax=10 -> x 1, width 9: every
box one pixel too small and shifted by one) and drops ``difficult`` (hard boxes become
normal training targets and count as misses in evaluation). Both matter for VOC mAP, so the
conversion is written here; the formats are small.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DIFFICULT_MODES = ("crowd", "drop", "keep")
YOLO_TOLERANCE = 1e-3          # normalised coordinates may overshoot [0, 1] by rounding, not more
EXIF_ORIENTATION = 0x0112
SHOW = 20                      # problems listed in full; the rest are counted


class ConversionError(ValueError):
    """Problems found in the source files, one ``file[:line]: what`` per entry."""

    def __init__(self, problems: list[str], source: str):
        self.problems = problems
        shown = "\n  ".join(problems[:SHOW])
        more = f"\n  ... and {len(problems) - SHOW} more" if len(problems) > SHOW else ""
        super().__init__(f"{len(problems)} problem(s) in {source}; nothing written. Fix them (or remove the "
                         f"files) and run again:\n  {shown}{more}")


# ---- shared pieces ----------------------------------------------------------------------------
# Fewer images than this: the small-data config is the one to start from (README, Small datasets).
SMALL_DATASET = 1000

def read_class_names(spec: str) -> list[str]:
    """Class names, in order, from a .txt file (one per line), a YOLO data .yaml (``names``:
    a list or {id: name}), or a comma-separated list ("cat,dog")."""
    path = Path(spec)
    if path.suffix.lower() in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"classes file {path} does not exist")
        try:
            import yaml
        except ImportError as error:
            raise ImportError("reading a data .yaml needs PyYAML: pip install pyyaml (or give a classes.txt)") from error
        data = yaml.safe_load(path.read_text()) or {}
        names = data.get("names") if isinstance(data, dict) else None
        if isinstance(names, dict):
            ids = sorted(int(k) for k in names)
            if ids != list(range(len(ids))):
                raise ValueError(f"{path}: 'names' must map the ids 0..{len(ids) - 1}, got {ids}")
            names = [names[k] if k in names else names[str(k)] for k in ids]
        if not isinstance(names, list) or not names:
            raise ValueError(f"{path} has no 'names' list (YOLO data yaml: names: [cat, dog] or names: {{0: cat}})")
        out = [str(n) for n in names]
    elif path.is_file():
        out = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    elif "," in spec or not path.suffix:
        out = [name.strip() for name in spec.split(",") if name.strip()]
    else:
        raise FileNotFoundError(f"classes file {path} does not exist")
    if not out:
        raise ValueError(f"no class names in {spec!r}")
    duplicates = sorted(n for n, c in Counter(out).items() if c > 1)
    if duplicates:
        raise ValueError(f"class names repeat in {spec}: {duplicates}")
    return out


def image_header(path: Path) -> tuple[int, int, int]:
    """(width, height, EXIF orientation) of the image as stored, from its header only."""
    from PIL import Image   # installed with torchvision; reads the header without decoding
    with Image.open(path) as image:
        width, height = image.size
        try:
            orientation = int(image.getexif().get(EXIF_ORIENTATION, 1))
        except Exception:   # a damaged EXIF block: the pixels are still usable
            orientation = 1
    return width, height, orientation


def find_image(images_dir: Path, stem: str) -> Path | None:
    """The image named ``stem`` + any known suffix in ``images_dir``."""
    for suffix in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES):
        candidate = images_dir / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


class CocoBuilder:
    """Collects images and boxes; ``result()`` -> the COCO dict with ids 1..N in insertion
    order and categories 1..C in class order."""

    def __init__(self, class_names: list[str] | None):
        self.fixed = class_names is not None
        self.class_names = list(class_names or [])
        self.images: list[dict] = []
        self.boxes: list[tuple[int, str, list[float], bool]] = []   # (image id, class, xywh, crowd)
        self.rotated: list[str] = []

    def add_image(self, file_name: str, width: int, height: int) -> int:
        self.images.append({"id": len(self.images) + 1, "file_name": file_name, "width": int(width),
                            "height": int(height)})
        return len(self.images)

    def add_box(self, image_id: int, name: str, xywh: list[float], crowd: bool = False) -> None:
        if not self.fixed and name not in self.class_names:
            self.class_names.append(name)
        self.boxes.append((image_id, name, [float(v) for v in xywh], crowd))

    def result(self, source: str) -> dict:
        names = self.class_names if self.fixed else sorted(self.class_names)
        cat_id = {name: i + 1 for i, name in enumerate(names)}
        annotations = []
        for image_id, name, (x, y, w, h), crowd in self.boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat_id[name],
                                "bbox": [round(v, 4) for v in (x, y, w, h)], "area": round(w * h, 4),
                                "iscrowd": int(crowd),
                                "segmentation": [[round(v, 4) for v in (x, y, x + w, y, x + w, y + h, x, y + h)]]})
        return {"info": {"description": f"converted from {source} by densedet (public/data/convert.py)"},
                "images": self.images, "annotations": annotations,
                "categories": [{"id": cat_id[n], "name": n, "supercategory": ""} for n in names]}


def _unknown_class(name: str, builder: CocoBuilder) -> str | None:
    if builder.fixed and name not in builder.class_names:
        return f"class {name!r} is not in the given class list {builder.class_names}: add it to --classes"
    return None


def _number(element, tag: str) -> float:
    child = element.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise ValueError(f"<{tag}> is missing")
    try:
        return float(child.text.strip())
    except ValueError:
        raise ValueError(f"<{tag}> is {child.text.strip()!r}, not a number") from None


# ---- Pascal VOC ----------------------------------------------------------------------------------
def voc_to_coco(annotations: str | Path, images_dir: str | Path | None = None, class_names: list[str] | None = None,
                difficult: str = "crowd", ids_file: str | Path | None = None) -> tuple[dict, Path]:
    """Pascal VOC XML files -> (COCO dict, images folder its file names are relative to).

    Args:
        annotations: a folder of .xml files (VOC's Annotations/) or one .xml file.
        images_dir: where the images are (default: ../JPEGImages next to the folder, else the folder).
        class_names: fixed class order (categories 1..C); None: the names found, sorted.
        difficult: "crowd" (iscrowd=1: left out of training targets, ignored by COCOeval, as
            VOC's own evaluation ignores them), "drop", or "keep" (normal boxes).
        ids_file: a VOC ImageSets list (one id per line): convert only those files, in that order.
    """
    if difficult not in DIFFICULT_MODES:
        raise ValueError(f"difficult must be one of {DIFFICULT_MODES}, got {difficult!r}")
    source = Path(annotations)
    if ids_file is not None:
        folder = source if source.is_dir() else source.parent
        ids = [line.split()[0] for line in Path(ids_file).read_text().splitlines() if line.strip()]
        files = [folder / f"{i}.xml" for i in ids]
    elif source.is_dir():
        files = sorted(source.glob("*.xml"))
    elif source.is_file():
        files = [source]
    else:
        raise FileNotFoundError(f"VOC annotations {source} do not exist (a folder of .xml files or one .xml)")
    if not files:
        raise FileNotFoundError(f"no .xml files in {source}")
    folder = source if source.is_dir() else source.parent
    if images_dir is None:
        guess = folder.parent / "JPEGImages"
        images_dir = guess if guess.is_dir() else folder
    images_dir = Path(images_dir)

    builder, problems = CocoBuilder(class_names), []
    for file in files:
        try:
            root = ET.parse(file).getroot()
        except FileNotFoundError:
            problems.append(f"{file}: listed in {ids_file} but does not exist")
            continue
        except ET.ParseError as error:
            problems.append(f"{file}: not valid XML ({error})")
            continue
        name_tag = root.findtext("filename")
        file_name = name_tag.strip() if name_tag and name_tag.strip() else None
        image_path = images_dir / file_name if file_name else find_image(images_dir, file.stem)
        if file_name is None and image_path is not None:
            file_name = image_path.name
        size = root.find("size")
        try:
            width, height = int(_number(size, "width")), int(_number(size, "height"))
            if width <= 0 or height <= 0:
                raise ValueError("zero size")
        except (ValueError, TypeError, AttributeError):
            # No (or a zero) <size>, as some tools write: read the image's own header.
            if image_path is None or not image_path.is_file():
                problems.append(f"{file}: no usable <size> and its image {image_path or file.stem + '.*'} is not in "
                                f"{images_dir}: add <size> or pass --images")
                continue
            try:
                width, height, orientation = image_header(image_path)
            except Exception as error:
                problems.append(f"{file}: no usable <size> and its image {image_path} cannot be read ({error})")
                continue
            if orientation != 1:
                builder.rotated.append(str(image_path))
        if file_name is None:
            problems.append(f"{file}: no <filename> and no image {file.stem}.* in {images_dir}: add <filename>")
            continue
        image_id = builder.add_image(file_name, width, height)
        for k, obj in enumerate(root.findall("object"), start=1):
            where = f"{file}: object {k}"
            name = (obj.findtext("name") or "").strip()
            if not name:
                problems.append(f"{where}: no <name>")
                continue
            unknown = _unknown_class(name, builder)
            if unknown:
                problems.append(f"{where}: {unknown}")
                continue
            box = obj.find("bndbox")
            if box is None:
                problems.append(f"{where} ({name}): no <bndbox>")
                continue
            try:
                xmin, ymin, xmax, ymax = (_number(box, t) for t in ("xmin", "ymin", "xmax", "ymax"))
            except ValueError as error:
                problems.append(f"{where} ({name}): {error}")
                continue
            if xmax < xmin or ymax < ymin:
                problems.append(f"{where} ({name}): xmax/ymax ({xmax:g}, {ymax:g}) below xmin/ymin ({xmin:g}, {ymin:g})")
                continue
            is_difficult = (obj.findtext("difficult") or "0").strip() in ("1", "true", "True")
            if is_difficult and difficult == "drop":
                continue
            # 1-based inclusive pixel indices -> continuous coordinates (module docstring).
            xywh = [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]
            builder.add_box(image_id, name, xywh, crowd=is_difficult and difficult == "crowd")
    if problems:
        raise ConversionError(problems, str(source))
    return _with_warnings(builder, f"Pascal VOC {source}"), images_dir


# ---- YOLO -------------------------------------------------------------------------------------------
def yolo_to_coco(labels_dir: str | Path, images_dir: str | Path | None, class_names: list[str]) -> tuple[dict, Path]:
    """YOLO txt labels -> (COCO dict, images folder).

    Every image of ``images_dir`` is an image of the dataset; one without a label file (or with
    an empty one) is a negative. A line is ``class cx cy w h`` normalised to 0-1, or a
    segment ``class x1 y1 x2 y2 ...`` (its box is the points' min/max). Class ids index
    ``class_names`` (classes.txt or the data yaml's ``names``).

    Args:
        labels_dir: the folder of .txt files (e.g. dataset/labels/train).
        images_dir: default: the same path with its last "labels" part replaced by "images".
    """
    labels_dir = Path(labels_dir)
    if not labels_dir.is_dir():
        raise FileNotFoundError(f"YOLO labels folder {labels_dir} does not exist")
    if images_dir is None:
        parts = list(labels_dir.parts)
        if "labels" not in parts:
            raise ValueError(f"cannot guess the images folder of {labels_dir} (no 'labels' in the path): pass --images")
        index = len(parts) - 1 - parts[::-1].index("labels")
        images_dir = Path(*parts[:index], "images", *parts[index + 1:])
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"images folder {images_dir} does not exist: pass --images")
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    label_files = {p.stem: p for p in labels_dir.glob("*.txt") if p.name != "classes.txt"}
    builder, problems = CocoBuilder(class_names), []
    for image_path in images:
        try:
            width, height, orientation = image_header(image_path)
        except Exception as error:
            problems.append(f"{image_path}: cannot be read ({error})")
            continue
        if orientation != 1:
            builder.rotated.append(str(image_path))
        image_id = builder.add_image(image_path.name, width, height)
        label_file = label_files.pop(image_path.stem, None)
        if label_file is None:
            continue                                   # no label file: a negative image
        for number, line in enumerate(label_file.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{label_file}:{number}"
            try:
                values = [float(v) for v in fields]
            except ValueError:
                problems.append(f"{where}: {line.strip()!r} is not numbers (class cx cy w h)")
                continue
            if len(values) == 5:
                cls, cx, cy, w, h = values
                coords = [cx, cy, w, h]
            elif len(values) >= 7 and len(values) % 2 == 1:     # a segment: class x1 y1 x2 y2 x3 y3 ...
                cls, points = values[0], values[1:]
                xs, ys = points[0::2], points[1::2]
                coords = [(min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)]
            else:
                problems.append(f"{where}: {len(values)} values; a box line is 'class cx cy w h' (5 values)")
                continue
            if cls != int(cls) or not 0 <= cls < len(class_names):
                problems.append(f"{where}: class id {fields[0]} is not one of 0..{len(class_names) - 1} "
                                f"({len(class_names)} classes given)")
                continue
            if any(v < -YOLO_TOLERANCE or v > 1 + YOLO_TOLERANCE for v in (values[1:] if len(values) > 5 else coords)):
                problems.append(f"{where}: coordinates {fields[1:]} are not normalised to 0-1 "
                                f"(pixel values? divide by the image's width and height)")
                continue
            cx, cy, w, h = coords
            if w <= 0 or h <= 0:
                problems.append(f"{where}: box of zero width or height ({fields[3:5]})")
                continue
            builder.add_box(image_id, class_names[int(cls)], [(cx - w / 2) * width, (cy - h / 2) * height,
                                                            w * width, h * height])
    for stem, label_file in sorted(label_files.items()):
        problems.append(f"{label_file}: no image {stem}.* in {images_dir}")
    if problems:
        raise ConversionError(problems, str(labels_dir))
    if not images:
        raise FileNotFoundError(f"no images in {images_dir}")
    return _with_warnings(builder, f"YOLO {labels_dir}"), images_dir


# ---- LabelMe -------------------------------------------------------------------------------------
LABELME_BOX_SHAPES = ("rectangle", "polygon", "circle")


def labelme_to_coco(source: str | Path, images_dir: str | Path | None = None,
                    class_names: list[str] | None = None, difficult: str = "crowd") -> tuple[dict, Path]:
    """LabelMe json files -> (COCO dict, images folder).

    Rectangles and polygons become their points' min/max box, circles (centre, a point on
    the edge) their bounding square; points and lines carry no box and are counted in a
    warning. ``imageData`` (the image embedded in base64) is never read into the output:
    the image file is referenced by ``imagePath``. Shapes flagged difficult (LabelMe's per-shape
    ``"flags": {"difficult": true}``, or a ``"difficult"`` key of the shape) follow ``difficult``
    as for VOC.

    Args:
        source: a folder of LabelMe .json files (or one file).
        images_dir: the folder file names are made relative to (default: the json folder).
    """
    if difficult not in DIFFICULT_MODES:
        raise ValueError(f"difficult must be one of {DIFFICULT_MODES}, got {difficult!r}")
    source = Path(source)
    files = sorted(source.glob("*.json")) if source.is_dir() else [source]
    if not source.exists() or not files:
        raise FileNotFoundError(f"no LabelMe .json files in {source}")
    folder = source if source.is_dir() else source.parent
    images_dir = Path(images_dir) if images_dir is not None else folder
    builder, problems, skipped = CocoBuilder(class_names), [], Counter()
    for file in files:
        try:
            data = json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            problems.append(f"{file}: not valid json ({error})")
            continue
        if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
            problems.append(f"{file}: no 'shapes' list (not a LabelMe file)")
            continue
        image_ref = str(data.get("imagePath") or "").replace("\\", "/")
        image_path = (file.parent / image_ref) if image_ref else find_image(file.parent, file.stem)
        if image_path is None:
            problems.append(f"{file}: no 'imagePath' and no image {file.stem}.* beside it")
            continue
        try:
            file_name = Path(os.path.relpath(image_path.resolve(), images_dir.resolve())).as_posix()
        except ValueError:   # another drive (Windows)
            file_name = image_path.name
        width, height = data.get("imageWidth"), data.get("imageHeight")
        if not (isinstance(width, (int, float)) and isinstance(height, (int, float)) and width > 0 and height > 0):
            try:
                width, height, orientation = image_header(image_path)
            except Exception as error:
                problems.append(f"{file}: no imageWidth/imageHeight and its image {image_path} cannot be read ({error})")
                continue
            if orientation != 1:
                builder.rotated.append(str(image_path))
        image_id = builder.add_image(file_name, width, height)
        for k, shape in enumerate(data["shapes"], start=1):
            where = f"{file}: shape {k}"
            name = str(shape.get("label", "")).strip() if isinstance(shape, dict) else ""
            kind = (shape.get("shape_type") or "polygon") if isinstance(shape, dict) else None
            if not name:
                problems.append(f"{where}: no label")
                continue
            if kind not in LABELME_BOX_SHAPES:
                skipped[kind] += 1
                continue
            unknown = _unknown_class(name, builder)
            if unknown:
                problems.append(f"{where}: {unknown}")
                continue
            try:
                points = [(float(p[0]), float(p[1])) for p in shape.get("points") or []]
            except (TypeError, ValueError, IndexError):
                problems.append(f"{where} ({name}): points {shape.get('points')!r} are not [x, y] pairs")
                continue
            if len(points) < 2:
                problems.append(f"{where} ({name}): a {kind} needs at least 2 points, has {len(points)}")
                continue
            if kind == "circle":
                (cx, cy), (px, py) = points[:2]
                radius = ((px - cx) ** 2 + (py - cy) ** 2) ** 0.5
                points = [(cx - radius, cy - radius), (cx + radius, cy + radius)]
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
            if x2 <= x1 or y2 <= y1:
                problems.append(f"{where} ({name}): its points span zero width or height")
                continue
            # LabelMe stores per-shape flags under "flags" ({"difficult": true}); a top-level key too
            flags = shape.get("flags") if isinstance(shape.get("flags"), dict) else {}
            is_difficult = bool(flags.get("difficult", shape.get("difficult", False)))
            if is_difficult and difficult == "drop":
                continue
            builder.add_box(image_id, name, [x1, y1, x2 - x1, y2 - y1], crowd=is_difficult and difficult == "crowd")
    if problems:
        raise ConversionError(problems, str(source))
    if skipped:
        print(f"warning: {sum(skipped.values())} LabelMe shapes without a box area skipped: "
              + ", ".join(f"{n} {kind}" for kind, n in sorted(skipped.items())), file=sys.stderr)
    return _with_warnings(builder, f"LabelMe {source}"), images_dir


def _with_warnings(builder: CocoBuilder, source: str) -> dict:
    if builder.rotated:
        print(f"warning: {len(builder.rotated)} images carry an EXIF rotation, e.g. {builder.rotated[:3]}; densedet "
              f"reads pixels as stored (no rotation), and sizes and boxes here are in stored pixels: if the "
              f"annotations were drawn on the rotated view, save those images without the EXIF rotation first",
              file=sys.stderr)
    return builder.result(source)


# ---- command line --------------------------------------------------------------------------------
def write_json(data: dict, out: str | Path) -> None:
    """Atomically (temporary file, then rename)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(out)


def summary(data: dict) -> str:
    per_image = Counter(a["image_id"] for a in data["annotations"])
    names = {c["id"]: c["name"] for c in data["categories"]}
    per_class = Counter(names[a["category_id"]] for a in data["annotations"] if not a["iscrowd"])
    crowd = sum(a["iscrowd"] for a in data["annotations"])
    negatives = sum(1 for im in data["images"] if im["id"] not in per_image)
    return (f"{len(data['images'])} images ({negatives} without boxes), {len(data['annotations'])} boxes"
            + (f" ({crowd} difficult, as iscrowd=1)" if crowd else "") + f", {len(names)} classes: "
            + ", ".join(f"{name} {per_class[name]}" for name in names.values()))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("format", choices=("voc", "yolo", "labelme"))
    parser.add_argument("source", help="voc: Annotations folder (or .xml); yolo: labels folder; labelme: json folder")
    parser.add_argument("--out", required=True, help="the COCO json to write")
    parser.add_argument("--images", default=None, help="the images folder (file names are relative to it)")
    parser.add_argument("--classes", default=None,
                        help="class names in order: classes.txt, a YOLO data .yaml, or 'cat,dog'. "
                             "VOC/LabelMe default: the names found, sorted; YOLO: classes.txt beside the labels")
    parser.add_argument("--difficult", choices=DIFFICULT_MODES, default="crowd",
                        help="VOC/LabelMe difficult boxes: crowd (iscrowd=1, ignored; default), drop, keep")
    parser.add_argument("--ids", default=None, help="VOC: an ImageSets list of ids to convert (e.g. train.txt)")
    return parser.parse_args(argv)


def _yolo_classes(labels_dir: Path) -> list[str]:
    for candidate in (labels_dir / "classes.txt", labels_dir.parent / "classes.txt",
                      labels_dir.parent.parent / "classes.txt"):
        if candidate.is_file():
            return read_class_names(str(candidate))
    raise ValueError(f"YOLO labels are class numbers: pass their names with --classes classes.txt (one per line) "
                     f"or --classes data.yaml (no classes.txt found next to {labels_dir})")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        classes = read_class_names(args.classes) if args.classes else None
        if args.format == "voc":
            data, images_dir = voc_to_coco(args.source, args.images, classes, args.difficult, args.ids)
        elif args.format == "yolo":
            data, images_dir = yolo_to_coco(args.source, args.images, classes or _yolo_classes(Path(args.source)))
        else:
            data, images_dir = labelme_to_coco(args.source, args.images, classes, args.difficult)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    missing = [im["file_name"] for im in data["images"] if not (Path(images_dir) / im["file_name"]).is_file()]
    if missing:
        print(f"warning: {len(missing)} images are not in {images_dir}, e.g. {missing[:5]}: pass --images, "
              f"or train_images= must point where they are", file=sys.stderr)
    write_json(data, args.out)
    print(f"wrote {args.out}: {summary(data)}")
    config = "fcos/config_small.py" if len(data["images"]) < SMALL_DATASET else "fcos/config.py"
    print(f"train with: python train.py --config {config} train_images={images_dir} "
          f"train_annotations={args.out} ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
