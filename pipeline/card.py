"""The dataset card, OUT/README.md: Hugging Face YAML metadata and a body written from dataset_info.json.

A builder declares what it knows about its data (licenses, sources, citations, decontamination) as a `CardInfo`;
`dataset_card(info, card)` adds what the run produced (splits, counts, rejects, extra tables, format, command).
The metadata is built with huggingface_hub's `DatasetCardData` and serialised by `DatasetCard`, so the YAML is what
the Hub and `datasets` parse. `configs` name one data_files pattern per split (`data/{split}-*`), so
`load_dataset(OUT)` keeps every split under its own name, and one config per extra table (grit's `annotations`);
`dataset_info` gives each split's row count, which `datasets` checks when it loads.

An output without any record has no data file to point to: its card still parses, and `load_dataset(OUT)` fails with
datasets' own one-line FileNotFoundError (no data files found). The CLI already exits 1 with "no records were
written" in that case; the card body says so too.

`card_to_json` / `card_from_json` store a CardInfo in dataset_info.json (under "card"), so `render` and other tools
recover it with `card_info_from(out_dir)`.
"""
from __future__ import annotations

import dataclasses
import json
import re
import shlex
from dataclasses import dataclass

MODEL_NAMES = {"florence2": "Florence-2", "kosmos2": "Kosmos-2", "paligemma": "PaliGemma", "qwen2vl": "Qwen2-VL",
               "qwen25vl": "Qwen2.5-VL", "shikra": "Shikra"}
COCO_TERMS = "https://cocodataset.org/#termsofuse"
REFER_URL = "https://github.com/lichengunc/refer"
GRIT_URL = "https://huggingface.co/datasets/zzliang/GRIT"
YAML_ORDER = ("pretty_name", "license", "license_name", "license_link", "language", "size_categories",
              "source_datasets", "task_categories", "tags", "configs", "dataset_info")
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"),
                   (10_000_000_000, "1B<n<10B"), (100_000_000_000, "10B<n<100B"), (1_000_000_000_000, "100B<n<1T"))

# ---------------------------------------------------------------- citations (BibTeX)

BIBTEX = {
    "coco": """@inproceedings{lin2014coco,
  title     = {Microsoft {COCO}: Common Objects in Context},
  author    = {Lin, Tsung-Yi and Maire, Michael and Belongie, Serge and Hays, James and Perona, Pietro and
               Ramanan, Deva and Doll{\\'a}r, Piotr and Zitnick, C. Lawrence},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2014},
  eprint    = {1405.0312},
  archivePrefix = {arXiv}
}""",
    "referitgame": """@inproceedings{kazemzadeh2014referitgame,
  title     = {{ReferItGame}: Referring to Objects in Photographs of Natural Scenes},
  author    = {Kazemzadeh, Sahar and Ordonez, Vicente and Matten, Mark and Berg, Tamara},
  booktitle = {Proceedings of the 2014 Conference on Empirical Methods in Natural Language Processing (EMNLP)},
  pages     = {787--798},
  year      = {2014}
}""",
    "refcoco": """@inproceedings{yu2016modeling,
  title     = {Modeling Context in Referring Expressions},
  author    = {Yu, Licheng and Poirson, Patrick and Yang, Shan and Berg, Alexander C. and Berg, Tamara L.},
  booktitle = {European Conference on Computer Vision (ECCV)},
  pages     = {69--85},
  year      = {2016},
  eprint    = {1608.00272},
  archivePrefix = {arXiv}
}""",
    "refcocog": """@inproceedings{mao2016generation,
  title     = {Generation and Comprehension of Unambiguous Object Descriptions},
  author    = {Mao, Junhua and Huang, Jonathan and Toshev, Alexander and Camburu, Oana and Yuille, Alan L. and
               Murphy, Kevin},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages     = {11--20},
  year      = {2016},
  eprint    = {1511.02283},
  archivePrefix = {arXiv}
}""",
    "refcocog_umd": """@inproceedings{nagaraja2016modeling,
  title     = {Modeling Context Between Objects for Referring Expression Understanding},
  author    = {Nagaraja, Varun K. and Morariu, Vlad I. and Davis, Larry S.},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2016},
  eprint    = {1608.00525},
  archivePrefix = {arXiv}
}""",
    "kosmos2": """@article{peng2023kosmos2,
  title   = {Kosmos-2: Grounding Multimodal Large Language Models to the World},
  author  = {Peng, Zhiliang and Wang, Wenhui and Dong, Li and Hao, Yaru and Huang, Shaohan and Ma, Shuming and
             Wei, Furu},
  journal = {arXiv preprint arXiv:2306.14824},
  year    = {2023}
}""",
    "florence2": """@inproceedings{xiao2024florence2,
  title     = {Florence-2: Advancing a Unified Representation for a Variety of Vision Tasks},
  author    = {Xiao, Bin and Wu, Haiping and Xu, Weijian and Dai, Xiyang and Hu, Houdong and Lu, Yumao and
               Zeng, Michael and Liu, Ce and Yuan, Lu},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2024},
  eprint    = {2311.06242},
  archivePrefix = {arXiv}
}""",
    "paligemma": """@article{beyer2024paligemma,
  title   = {{PaliGemma}: A versatile {3B} {VLM} for transfer},
  author  = {Beyer, Lucas and Steiner, Andreas and Pinto, Andr{\\'e} Susano and Kolesnikov, Alexander and
             Wang, Xiao and Salz, Daniel and Neumann, Maxim and Alabdulmohsin, Ibrahim and Tschannen, Michael and
             Bugliarello, Emanuele and others},
  journal = {arXiv preprint arXiv:2407.07726},
  year    = {2024}
}""",
    "qwen2vl": """@article{wang2024qwen2vl,
  title   = {{Qwen2-VL}: Enhancing Vision-Language Model's Perception of the World at Any Resolution},
  author  = {Wang, Peng and Bai, Shuai and Tan, Sinan and Wang, Shijie and Fan, Zhihao and Bai, Jinze and
             Chen, Keqin and Liu, Xuejing and Wang, Jialin and Ge, Wenbin and others},
  journal = {arXiv preprint arXiv:2409.12191},
  year    = {2024}
}""",
    "qwen25vl": """@article{bai2025qwen25vl,
  title   = {{Qwen2.5-VL} Technical Report},
  author  = {Bai, Shuai and Chen, Keqin and Liu, Xuejing and Wang, Jialin and Ge, Wenbin and Song, Sibo and
             Dang, Kai and Wang, Peng and Wang, Shijie and Tang, Jun and others},
  journal = {arXiv preprint arXiv:2502.13923},
  year    = {2025}
}""",
    "docvqa": """@inproceedings{mathew2021docvqa,
  title     = {{DocVQA}: A Dataset for {VQA} on Document Images},
  author    = {Mathew, Minesh and Karatzas, Dimosthenis and Jawahar, C. V.},
  booktitle = {Proceedings of the IEEE/CVF Winter Conference on Applications of Computer Vision (WACV)},
  pages     = {2200--2209},
  year      = {2021},
  eprint    = {2007.00398},
  archivePrefix = {arXiv}
}""",
    "shikra": """@article{chen2023shikra,
  title   = {Shikra: Unleashing Multimodal {LLM}'s Referential Dialogue Magic},
  author  = {Chen, Keqin and Zhang, Zhao and Zeng, Weili and Zhang, Richong and Zhu, Feng and Zhao, Rui},
  journal = {arXiv preprint arXiv:2306.15195},
  year    = {2023}
}""",
}

# ---------------------------------------------------------------- what a builder declares


@dataclass(frozen=True)
class CardInfo:
    """What a builder declares about its data. `license` is a Hub license id (lower-case SPDX, e.g. apache-2.0,
    cc-by-4.0) or "other" with `license_name` (an id) and `license_link` (a URL); the model format's citation is
    added by `dataset_card` from the run's --format, so a re-rendered output cites its own model."""
    pretty_name: str
    description: str
    license: str = "other"
    license_name: str | None = None
    license_link: str | None = None
    annotation_license: str = ""
    image_license: str = ""
    source_datasets: tuple[str, ...] = ()
    task_categories: tuple[str, ...] = ("image-text-to-text", "object-detection")
    language: tuple[str, ...] = ("en",)
    citations: tuple[str, ...] = ()
    decontamination: str = ""
    tags: tuple[str, ...] = ("grounding", "groundforge")

    def __post_init__(self):
        if self.license == "other" and not self.license_name:
            raise ValueError("license 'other' needs a license_name")
        for name in ("source_datasets", "task_categories", "language", "citations", "tags"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise TypeError(f"CardInfo.{name} is a sequence of strings, not a string")
            object.__setattr__(self, name, tuple(value))


COCO_ANNOTATIONS = f"MS COCO annotations: CC BY 4.0, by the COCO Consortium ({COCO_TERMS})."
COCO_IMAGES = ("MS COCO images are not owned by the COCO Consortium: each keeps the license its Flickr owner gave it "
               f"(CC BY, CC BY-SA, CC BY-NC, ...; see `images[].license` in the COCO annotation JSON); use "
               f"must follow the Flickr Terms of Use ({COCO_TERMS}).")
EXCLUDE_HINT = ("If this set is for training next to a RefCOCO evaluation, build it with `--exclude-images "
                "holdout_image_ids.txt` from a `groundforge build refcoco` output: RefCOCO's val/test images are "
                "COCO train2014 images.")


def counting_card() -> CardInfo:
    return CardInfo(
        pretty_name="groundforge counting (COCO boxes)",
        description=("Counting questions built from COCO-style detection boxes: one `counting` record per image "
                     "(the counts of every class as JSON) and one `count_class` record per class in the image "
                     "(an integer answer). Crowd regions make a class uncountable and are rejected with a reason."),
        license="other", license_name="coco-terms-of-use", license_link=COCO_TERMS,
        annotation_license=(COCO_ANNOTATIONS + " Other COCO-format inputs (e.g. Roboflow exports) keep the license of "
                            "their source."),
        image_license=COCO_IMAGES,
        source_datasets=("extended|coco",),
        task_categories=("visual-question-answering", "image-text-to-text", "object-detection"),
        citations=(BIBTEX["coco"],),
        decontamination=EXCLUDE_HINT,
        tags=("grounding", "counting", "groundforge"))


REFCOCO_NAMES = {"refcoco": "RefCOCO", "refcoco+": "RefCOCO+", "refcocog": "RefCOCOg"}


def refcoco_card(dataset: str = "refcoco") -> CardInfo:
    """`dataset`: refcoco, refcoco+ or refcocog."""
    if dataset not in REFCOCO_NAMES:
        raise ValueError(f"unknown RefCOCO dataset {dataset!r}; expected one of {', '.join(REFCOCO_NAMES)}")
    name = REFCOCO_NAMES[dataset]
    cites = (("refcocog", "refcocog_umd") if dataset == "refcocog" else ("referitgame", "refcoco")) + ("coco",)
    return CardInfo(
        pretty_name=f"groundforge {name} (rec / reg)",
        description=(f"{name} referring expressions on MS COCO images: `rec` records (expression -> box) and `reg` "
                     "records (box -> expression), one per (ref, unique sentence), in the source's own splits."),
        license="other", license_name="apache-2.0-and-coco-images", license_link=COCO_TERMS,
        annotation_license=(f"{name} expressions and splits: Apache-2.0, as distributed with the refer toolkit "
                            f"({REFER_URL}). Boxes: " + COCO_ANNOTATIONS),
        image_license=COCO_IMAGES,
        source_datasets=("extended|coco", f"extended|{dataset}"),
        task_categories=("image-text-to-text", "object-detection"),
        citations=tuple(BIBTEX[k] for k in cites),
        decontamination=("`holdout_image_ids.txt` (next to this card) lists every image of a non-train split "
                         f"(val, testA, testB, test) of this {name} build. Pass it to `--exclude-images` when "
                         "building other training sets on COCO images (counting, grit), so no evaluation image is "
                         "trained on. Splits follow the source: the unc (RefCOCO, RefCOCO+) and umd (RefCOCOg) "
                         "splits are by image, the google splits are not (their train and val share images), and "
                         "the three datasets split COCO differently, so combine them only through the holdout "
                         "files."),
        tags=("grounding", "referring-expressions", "groundforge"))


GRIT_INPUTS = ("coco", "captions", "webdataset", "grit20m")


def grit_card(input_kind: str = "coco") -> CardInfo:
    """`input_kind`: coco (COCO captions, the shipped sample), captions (a caption table), webdataset
    (img2dataset shards) or grit20m (zzliang/GRIT rows)."""
    if input_kind not in GRIT_INPUTS:
        raise ValueError(f"unknown GRIT input kind {input_kind!r}; expected one of {', '.join(GRIT_INPUTS)}")
    description = ("GRIT-style grounded captions (the Kosmos-2 construction): noun chunks and referring expressions "
                   "of each caption are grounded to boxes, filtered by score, size and NMS, and written as "
                   "`grounded_caption` records (the caption with its grounded spans) and `rec` records (one per "
                   "referring expression). The `annotations` config holds the same pairs in the GRIT-20M layout: "
                   "`noun_chunks` and `ref_exps` as [start_char, end_char, x1, y1, x2, y2, score], boxes "
                   "normalised to 0..1.")
    cites = [BIBTEX["kosmos2"]]
    if input_kind == "coco":
        kw = {"license_name": "coco-terms-of-use", "license_link": COCO_TERMS,
              "annotation_license": ("Captions and boxes: " + COCO_ANNOTATIONS
                                     + " Noun chunks and expressions are derived by this pipeline (spaCy)."),
              "image_license": COCO_IMAGES, "source_datasets": ("extended|coco",)}
        cites.append(BIBTEX["coco"])
    elif input_kind == "grit20m":
        kw = {"license_name": "ms-pl-and-source-images", "license_link": GRIT_URL,
              "annotation_license": ("Captions, spans and boxes from GRIT-20M: Microsoft Public License (MS-PL), "
                                     f"as declared on {GRIT_URL}."),
              "image_license": ("Images come from the web (COYO-700M / LAION-2B URLs): GRIT-20M does not license "
                                "them; each keeps the rights of its owner."),
              "source_datasets": ("extended|zzliang/GRIT",)}
    else:
        kw = {"license_name": "source-licenses", "license_link": None,
              "annotation_license": ("Captions keep the license of the input caption data; spans and boxes are "
                                     "derived by this pipeline (spaCy and the grounding model). Fill in the source "
                                     "license before publishing."),
              "image_license": "Images keep the license of their source; fill it in before publishing.",
              "source_datasets": ()}
    return CardInfo(pretty_name="groundforge GRIT-style grounded captions", description=description, license="other",
                    task_categories=("image-text-to-text", "image-to-text", "object-detection"),
                    citations=tuple(cites), decontamination=EXCLUDE_HINT if input_kind == "coco" else "",
                    tags=("grounding", "grounded-captions", "groundforge"), **kw)


DOCVQA_URL = "https://rrc.cvc.uab.es/?ch=17"
UCSF_IDL_URL = "https://www.industrydocuments.ucsf.edu/"


def docvqa_card() -> CardInfo:
    return CardInfo(
        pretty_name="groundforge DocVQA (vqa)",
        description=("Document visual question answering in the DocVQA layout: one `vqa` record per question. The "
                     "question is the prompt (and `caption`), the target is the question's first answer, and "
                     "`meta.answers` keeps every ground-truth answer so predictions can be scored with ANLS "
                     "(groundforge.transforms.anls)."),
        license="other", license_name="docvqa-terms", license_link=DOCVQA_URL,
        annotation_license=("DocVQA questions and answers (Mathew et al., WACV 2021) are distributed by the Robust "
                            f"Reading Competition portal ({DOCVQA_URL}, registration and acceptance of its terms "
                            "required) and docvqa.org; they state no open license. Re-uploads on the Hugging Face "
                            "Hub declare their own (lmms-lab/DocVQA: apache-2.0). Check the terms of your source "
                            "before publishing."),
        image_license=("DocVQA document images are pages of the UCSF Industry Documents Library "
                       f"({UCSF_IDL_URL}), industry documents made public through litigation; use follows the "
                       "library's terms. The shipped groundforge sample documents are synthetic."),
        source_datasets=("extended|docvqa",),
        task_categories=("visual-question-answering", "document-question-answering", "image-text-to-text"),
        citations=(BIBTEX["docvqa"],),
        tags=("document-vqa", "docvqa", "groundforge"))


COUNTING = counting_card()
REFCOCO = {name: refcoco_card(name) for name in REFCOCO_NAMES}
GRIT = grit_card("coco")


def card_for(info: dict) -> CardInfo:
    """The builder's CardInfo from dataset_info.json alone (builder, dataset, args), for outputs whose
    dataset_info.json has no "card"; `render(<builder>)` outputs resolve to their source builder."""
    builder = str(info.get("builder", ""))
    while builder.startswith("render(") and builder.endswith(")"):
        builder = builder[len("render("):-1]
    args = info.get("args") or {}
    if builder == "refcoco":
        dataset = info.get("dataset")
        return refcoco_card(dataset if dataset in REFCOCO_NAMES else "refcoco")
    if builder == "grit":
        kind = args.get("input_kind")
        return grit_card(kind if kind in GRIT_INPUTS else "captions")
    if builder == "counting":
        return COUNTING
    if builder == "docvqa":
        return docvqa_card()
    return CardInfo(pretty_name=f"groundforge {info.get('dataset', 'dataset')}",
                    description="Grounded vision-language records built by groundforge.",
                    license="other", license_name="source-licenses",
                    annotation_license="The license of the source annotations.",
                    image_license="The licenses of the source images.")


# ---------------------------------------------------------------- JSON round trip (dataset_info.json "card")

def card_to_json(card: CardInfo) -> dict:
    """A JSON-ready dict (lists for tuples); `card_from_json` inverts it."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(card).items()}


def card_from_json(data: dict) -> CardInfo:
    names = {f.name for f in dataclasses.fields(CardInfo)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown CardInfo fields: {', '.join(unknown)}")
    return CardInfo(**data)


def card_info_from(out_dir: str) -> CardInfo:
    """The CardInfo of an existing output: dataset_info.json's "card" when the writer stored one, else the
    defaults of its builder (`card_for`). Raises FileNotFoundError when OUT has no dataset_info.json."""
    from groundforge.pipeline.fs import exists, join, read_bytes

    path = join(out_dir, "dataset_info.json")
    if not exists(path):
        raise FileNotFoundError(f"{path} not found: not a groundforge output, or its build did not finish")
    info = json.loads(read_bytes(path))
    return card_from_json(info["card"]) if info.get("card") else card_for(info)


# ---------------------------------------------------------------- the card

def size_category(rows: int) -> str:
    for limit, name in SIZE_CATEGORIES:
        if rows < limit:
            return name
    return "n>1T"


def _table_splits(table: dict) -> dict[str, dict]:
    """{split: {"rows", "bytes"}} of an extra table, from its file names `<name>/<split>-i-of-n.parquet`."""
    splits: dict[str, dict] = {}
    for f in table.get("files") or ():
        split = f["file"].rsplit("/", 1)[-1].split("-", 1)[0]  # split names have no "-" (options.SPLIT_NAME)
        entry = splits.setdefault(split, {"rows": 0, "bytes": 0})
        entry["rows"] += f.get("rows", 0)
        entry["bytes"] += f.get("bytes", 0)
    return dict(sorted(splits.items()))


def _data_splits(info: dict) -> dict[str, dict]:
    bytes_of: dict[str, int] = {}
    for s in info.get("shards") or ():
        bytes_of[s["split"]] = bytes_of.get(s["split"], 0) + s.get("bytes", 0)
    return {split: {"rows": entry["rows"], "bytes": bytes_of.get(split, 0), "tasks": entry.get("tasks", {})}
            for split, entry in sorted((info.get("splits") or {}).items())}


def _config(name: str, sub: str, splits: dict) -> tuple[dict, dict]:
    """(configs entry, dataset_info entry) of one config. num_bytes is the split's Parquet size."""
    config = {"config_name": name, "data_files": [{"split": s, "path": f"{sub}/{s}-*"} for s in splits]}
    size = sum(e["bytes"] for e in splits.values())
    dinfo = {"config_name": name,
             "splits": [{"name": s, "num_bytes": e["bytes"], "num_examples": e["rows"]} for s, e in splits.items()],
             "download_size": size, "dataset_size": size}
    return config, dinfo


def _configs(info: dict) -> tuple[list, list]:
    data = _data_splits(info)
    if data:
        config, dinfo = _config("default", "data", data)
        configs, infos = [config], [dinfo]
    else:
        # No record: point at data/*.parquet so `load_dataset(OUT)` says no data file was found, instead of
        # reading rejects/ (the only Parquet left) as if it were the data.
        configs, infos = [{"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}], []
    for name, table in sorted((info.get("tables") or {}).items()):
        splits = _table_splits(table)
        if splits:
            config, dinfo = _config(name, name, splits)
            configs.append(config)
            infos.append(dinfo)
    return configs, infos


def card_data(info: dict, card: CardInfo):
    """The YAML metadata as huggingface_hub's DatasetCardData."""
    from huggingface_hub import DatasetCardData

    fmt = output_format(info)
    configs, infos = _configs(info)
    extra = {}
    if card.license == "other":
        extra["license_name"] = card.license_name
        if card.license_link:
            extra["license_link"] = card.license_link
    tags = list(card.tags) + ([fmt] if fmt in MODEL_NAMES else [])
    return DatasetCardData(
        language=list(card.language), license=card.license, pretty_name=card.pretty_name,
        size_categories=[size_category(int(info.get("rows", 0)))],
        source_datasets=list(card.source_datasets) or None, task_categories=list(card.task_categories),
        tags=tags, configs=configs, dataset_info=infos or None, **extra)


def output_format(info: dict) -> str | None:
    args = info.get("args") or {}
    return args.get("format") or args.get("fmt")


_WINDOWS_ABS = re.compile(r"^[A-Za-z]:[\\/]")


def _is_abs(value: str) -> bool:
    return value.startswith(("/", "~", "\\", "file://")) or bool(_WINDOWS_ABS.match(value))


def _basename(value: str) -> str:
    return re.split(r"[\\/]", value.rstrip("/\\"))[-1] or value


def public_path(value: str) -> str:
    """A local absolute path shown as its basename (remote URLs such as gs://... are kept)."""
    return _basename(value) if _is_abs(value) else value


def display_command(command: str) -> str:
    """The build command as typed, with every local absolute path (also in --opt=PATH, quoted or not, POSIX or
    Windows) cut to its basename. Tokens keep their quotes (shlex in non-POSIX mode keeps backslashes)."""
    try:
        tokens = shlex.split(command, posix=False)
    except ValueError:
        tokens = command.split()
    return " ".join(_public_token(tok) for tok in tokens)


def _public_token(tok: str) -> str:
    quote = tok[0] if len(tok) >= 2 and tok[0] == tok[-1] and tok[0] in "'\"" else ""
    value = tok[1:-1] if quote else tok
    prefix = ""
    if value.startswith("-") and "=" in value:
        prefix, value = value.split("=", 1)
        prefix += "="
    return quote + prefix + public_path(value) + quote


def command_line(ctx) -> str:
    """The command a click context ran, as `groundforge build <builder> --opt value ...`: the options given on the
    command line (not defaults) in declaration order, then the extra (Beam) arguments. Values are as typed, so
    relative paths stay relative; `display_command` cuts absolute ones when the card shows it. The output folder is
    written `OUT`: the card lives in it, and two builds that differ only in where they write stay identical."""
    from click import Argument, Option
    from click.core import ParameterSource

    parts = ["groundforge", *ctx.command_path.split()[1:]]
    for param in ctx.command.params:
        if isinstance(param, Argument) and ctx.params.get(param.name) is not None:
            parts.append(str(ctx.params[param.name]))  # DATASET of render
        if not isinstance(param, Option) or ctx.get_parameter_source(param.name) is not ParameterSource.COMMANDLINE:
            continue
        value = ctx.params[param.name]
        opt = max(param.opts, key=len)
        if param.is_flag:
            parts.append(opt if value or not param.secondary_opts else max(param.secondary_opts, key=len))
        elif param.name == "out":
            parts += [opt, "OUT"]
        else:
            for v in value if param.multiple else (value,):
                parts += [opt, str(v)]
    return shlex.join(parts + [str(a) for a in ctx.args])


COLUMNS = {
    "id": "stable key: hash of dataset, source ids, task and variant; unique within the dataset",
    "dataset": "source dataset name (refcoco, refcoco+, refcocog, grit, counting, ...)",
    "split": "split as in the source (train, val, testA, ...)",
    "task": "rec (text -> box), reg (box -> text), grounded_caption, counting (all classes, JSON answer), "
            "count_class (one class, integer answer), ...",
    "format": "target model format of prompt/target",
    "prompt": "model input text",
    "target": "expected model output text",
    "image": "the image: {bytes, path} (Hugging Face Image; decodes to PIL)",
    "image_id": "source image id",
    "width": "pixel width in display orientation (after EXIF orientation)",
    "height": "pixel height in display orientation (after EXIF orientation)",
    "image_sha256": "SHA-256 of the stored image bytes",
    "objects": "format-independent annotation: label, bbox (pixel x1, y1, x2, y2), score (1.0 for human labels), "
               "span (characters of the label in caption; empty if none)",
    "caption": "source caption or expression (null if none)",
    "meta": "JSON: source file and ids, template id, license, builder name and version",
}


def column_docs() -> list[tuple[str, str]]:
    """(column, meaning) in schema order: the schema's `description` where it has one, else COLUMNS."""
    from groundforge.schemas import load_json_schema

    schema = load_json_schema("record")
    order = schema.get("x-column-order") or list(schema["properties"])
    return [(c, schema["properties"][c].get("description") or COLUMNS.get(c, "")) for c in order]


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _intro(info: dict, card: CardInfo) -> list[str]:
    return [f"# {card.pretty_name}", "", card.description, "",
            (f"Built by groundforge's `{info.get('builder')}` builder (version {info.get('builder_version')}) as "
             f"dataset `{info.get('dataset')}`: {info.get('rows', 0)} records. One row is one training sample."), ""]


def _format_section(fmt: str | None) -> list[str]:
    model = MODEL_NAMES.get(fmt or "", fmt or "unknown")
    return ["## Prompt format", "",
            (f"`prompt` and `target` are written for **{model}** (`--format {fmt}`). They are a rendering of the "
             "canonical boxes in `objects` (pixel x1, y1, x2, y2), so the same images and boxes can be re-rendered "
             "for another model without rebuilding:"), "",
            "```bash", "groundforge render --in OUT --out OUT2 --format paligemma", "```", "",
            "Formats: " + ", ".join(f"`{k}` ({v})" for k, v in MODEL_NAMES.items()) + ".", ""]


def _loading_section(data: dict, tables: dict) -> list[str]:
    if not data:
        return ["## Loading", "",
                ("This build wrote no records, so there is nothing to load: `load_dataset(\"OUT\")` fails with "
                 "\"no data files found\". The reasons are in `rejects/` (see below)."), ""]
    return (["## Loading", "", "```python", "from datasets import load_dataset", "",
             'ds = load_dataset("OUT")  # this directory, or its Hub repo id once uploaded',
             "# splits: " + ", ".join(data)]
            + [f'{name} = load_dataset("OUT", "{name}")' for name in tables]
            + ["```", "",
               ("Load the directory itself: the `configs` above map each split to `data/{split}-*`. "
                "`data_dir=\"OUT/data\"` would bypass them and rename or drop splits."), ""])


def _public_arg(value):
    if isinstance(value, str):
        return _public_token(value)
    if isinstance(value, list):
        return [_public_arg(v) for v in value]
    return value


def _command_section(info: dict, command: str | None) -> list[str]:
    out = ["## Build command", ""]
    if command:
        out += ["```bash", display_command(command), "```", ""]
    else:
        args = {k: _public_arg(v) for k, v in sorted((info.get("args") or {}).items())}
        out += ["Not recorded. Arguments:", "", "```json", json.dumps(args, indent=1, ensure_ascii=False), "```", ""]
    versions = info.get("versions") or {}
    if versions:
        out += ["Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) + ".", ""]
    return out


def _records_section() -> list[str]:
    return (["## Records", "", "| column | meaning |", "| --- | --- |"]
            + [f"| `{c}` | {_cell(m)} |" for c, m in column_docs()] + [""])


def _counts_section(data: dict, tables: dict, stats: dict) -> list[str]:
    out = ["## Counts", "", "| split | rows | tasks |", "| --- | --- | --- |"]
    out += [f"| {s} | {e['rows']} | " + _cell(", ".join(f"{t}: {n}" for t, n in sorted(e["tasks"].items()))) + " |"
            for s, e in data.items()] or ["| (none) | 0 | |"]
    out += [""]
    for name, splits in tables.items():
        rows = ", ".join(f"{s} {e['rows']} rows" for s, e in splits.items())
        out += [f"`{name}` config ({name}/): {rows}.", ""]
    if stats:
        counters = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(stats.items()))
        out += [f"Pipeline counters: {counters}.", ""]
    return out


def _rejects_section(rejects: dict) -> list[str]:
    reasons = sorted((rejects.get("by_reason") or {}).items())
    return (["## Rejects", "",
             (f"{rejects.get('rows', 0)} inputs were rejected; each is a row of `rejects/` (source, stage, reason, "
              "detail). Read them with `load_dataset(\"parquet\", data_files=\"OUT/rejects/*.parquet\")`."), "",
             "| stage/reason | rows |", "| --- | --- |"]
            + ([f"| {_cell(r)} | {n} |" for r, n in reasons] or ["| (none) | 0 |"]) + [""])


def _license_section(card: CardInfo) -> list[str]:
    license = f"`{card.license}`"
    if card.license == "other":
        license += f" ({card.license_name}" + (f", {card.license_link}" if card.license_link else "") + ")"
    return ["## Licenses", "",
            f"- Dataset license: {license}",
            f"- Annotations: {card.annotation_license or 'see the source dataset.'}",
            f"- Images: {card.image_license or 'see the source dataset.'}",
            "- Prompts and targets are generated by groundforge from the annotations above.", ""]


def _decontamination_section(info: dict, card: CardInfo) -> list[str]:
    exclude = (info.get("args") or {}).get("exclude_images")
    excluded = (info.get("stats") or {}).get("excluded_holdout_images", 0)
    out = ["## Decontamination", ""]
    if exclude or excluded:
        out += [(f"Built with `--exclude-images {public_path(exclude) if exclude else '...'}`: {excluded} images "
                 "listed there were dropped before any record was made."), ""]
    else:
        out += ["Built without `--exclude-images`.", ""]
    return out + ([card.decontamination, ""] if card.decontamination else [])


def _citations_section(card: CardInfo, fmt: str | None) -> list[str]:
    cites = list(card.citations)
    if fmt in BIBTEX and BIBTEX[fmt] not in cites:
        cites.append(BIBTEX[fmt])
    return ["## Citations", "", "```bibtex", "\n\n".join(cites), "```", ""] if cites else []


def _body(info: dict, card: CardInfo, command: str | None) -> str:
    fmt = output_format(info)
    data = _data_splits(info)
    tables = {name: _table_splits(t) for name, t in sorted((info.get("tables") or {}).items())}
    tables = {name: splits for name, splits in tables.items() if splits}
    return "\n".join(_intro(info, card) + _format_section(fmt) + _loading_section(data, tables)
                     + _command_section(info, command) + _records_section()
                     + _counts_section(data, tables, info.get("stats") or {})
                     + _rejects_section(info.get("rejects") or {}) + _license_section(card)
                     + _decontamination_section(info, card) + _citations_section(card, fmt))


def dataset_card(info: dict, card: CardInfo, *, command: str | None = None) -> str:
    """OUT/README.md for a finished output: `info` is dataset_info.json's content, `card` the builder's CardInfo,
    `command` the build command line as the user typed it (relative paths; an absolute path is cut to its
    basename)."""
    from huggingface_hub import DatasetCard

    data = card_data(info, card)
    text = _body(info, card, command)
    # DatasetCard parses the YAML back: a card whose metadata does not round-trip fails here, not on the Hub.
    try:
        yaml = data.to_yaml(original_order=list(YAML_ORDER))
    except TypeError:  # huggingface_hub before `original_order`: the keys keep DatasetCardData's own order
        yaml = data.to_yaml()
    return str(DatasetCard(f"---\n{yaml}\n---\n\n{text}"))
