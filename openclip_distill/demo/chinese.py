"""A fixed Chinese translation of the demo world (:mod:`openclip_distill.demo.corpus`).

Every English attribute word, synonym, position and background phrase, caption template and zero-shot
template has Chinese counterparts written in natural Chinese word order (size, then colour, then
shape: ``"一个大的红色星形在左上角"``). The translation is a table, not a model: the same label and
random draws always give the same sentence.

``class_name_zh(label)`` is the Chinese class name (``"大的红色星形"``); :func:`caption_zh` draws a
caption as :func:`openclip_distill.demo.corpus.caption` does for English; :func:`parse_caption_zh`
inverts it (the label a Chinese caption names).
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np

from .corpus import COLOURS, SHAPES, SIZES, class_attributes

# size -> (class-name form, caption forms); the class-name form is the first caption form
SIZES_ZH: Dict[str, List[str]] = {
    "small": ["小", "小", "微小", "小小"],
    "medium": ["中等大小", "中等大小", "中等", "中号"],
    "large": ["大", "大", "巨大", "很大"],
}
COLOURS_ZH: Dict[str, List[str]] = {
    "red": ["红色"],
    "orange": ["橙色"],
    "yellow": ["黄色"],
    "green": ["绿色"],
    "cyan": ["青色"],
    "blue": ["蓝色"],
    "purple": ["紫色", "紫色", "紫罗兰色"],
    "pink": ["粉色", "粉色", "粉红色"],
    "white": ["白色"],
    "black": ["黑色"],
}
SHAPES_ZH: Dict[str, List[str]] = {
    "circle": ["圆形", "圆形", "圆盘"],
    "square": ["正方形", "正方形", "方块"],
    "triangle": ["三角形"],
    "diamond": ["菱形"],
    "star": ["星形", "星形", "五角星"],
    "cross": ["十字", "十字", "加号"],
    "ring": ["圆环", "圆环", "环形"],
    "heart": ["心形"],
}
POSITION_PHRASES_ZH: Dict[str, List[str]] = {
    "top left": ["在左上角", "位于左上方", "在图的左上部"],
    "top": ["在顶部", "靠近上边缘", "在上方中间"],
    "top right": ["在右上角", "位于右上方", "在图的右上部"],
    "left": ["在左边", "位于左侧", "靠左"],
    "center": ["在中间", "位于中央", "在正中"],
    "right": ["在右边", "位于右侧", "靠右"],
    "bottom left": ["在左下角", "位于左下方", "在图的左下部"],
    "bottom": ["在底部", "靠近下边缘", "在下方中间"],
    "bottom right": ["在右下角", "位于右下方", "在图的右下部"],
}
BACKGROUND_PHRASES_ZH: Dict[str, List[str]] = {
    "plain": ["在纯色背景上", "在平淡的灰色背景上"],
    "noisy": ["在噪点背景上", "在颗粒状背景上"],
    "striped": ["在条纹背景上", "在条纹上"],
    "checkered": ["在棋盘格背景上", "在格子背景上"],
    "gradient": ["在渐变背景上", "在平滑渐变上"],
    "dotted": ["在点状背景上", "在斑点背景上"],
}
# {s} size, {c} colour, {h} shape, {p} position phrase, {b} background phrase
CAPTION_TEMPLATES_ZH: List[str] = [
    "一个{s}的{c}{h}",
    "一个{s}的{c}{h}{p}",
    "一个{s}的{c}{h}{b}",
    "一个{s}的{c}{h}{p}，{b}",
    "一张{s}的{c}{h}的照片",
    "一张照片：一个{s}的{c}{h}{p}",
    "一幅{s}的{c}{h}的图片，{b}",
    "{p}有一个{s}的{c}{h}",
    "{b}有一个{s}的{c}{h}",
    "{c}的{h}，{s}的，{p}",
    "一个{c}{h}，尺寸{s}，{b}",
    "这是一个{s}的{c}{h}{p}",
    "图中{p}是一个{s}的{c}{h}",
    "{s}的{c}{h}（{b}）",
    "{s}{c}{h}{p}",
    "一个{h}：{c}，{s}",
    "一幅画，画着一个{s}的{c}{h}{b}",
    "{b}，{p}有一个{s}的{c}{h}",
]
ZEROSHOT_TEMPLATES_ZH: List[str] = [
    "一张{c}的照片。",
    "{c}。",
    "一幅{c}的图像。",
    "一张{c}的图片。",
    "一幅{c}的画。",
]


def class_name_zh(label: int) -> str:
    """The Chinese class name of ``label`` (``"大的红色星形"``), same order as ``class_names()``."""
    s, c, h = class_attributes(label)
    return f"{SIZES_ZH[s][0]}的{COLOURS_ZH[c][0]}{SHAPES_ZH[h][0]}"


def class_names_zh() -> List[str]:
    """The 240 Chinese class names, index = label."""
    return [class_name_zh(i) for i in range(len(SIZES) * len(COLOURS) * len(SHAPES))]


def caption_zh(label: int, free: Dict[str, str], rng: np.random.Generator) -> str:
    """A random Chinese caption naming size, colour and shape (and maybe position / background)."""
    s, c, h = class_attributes(label)

    def pick(options: List[str]) -> str:
        return options[rng.integers(len(options))]

    tpl = CAPTION_TEMPLATES_ZH[rng.integers(len(CAPTION_TEMPLATES_ZH))]
    words = {"s": pick(SIZES_ZH[s]), "c": pick(COLOURS_ZH[c]), "h": pick(SHAPES_ZH[h])}
    words["p"] = pick(POSITION_PHRASES_ZH[free["position"]])
    words["b"] = pick(BACKGROUND_PHRASES_ZH[free["background"]])
    return tpl.format(**words)


def parse_caption_zh(text: str) -> int:
    """The class label a Chinese caption names; -1 unless exactly one size, colour and shape occur.

    Shapes are matched before sizes: "圆环" and "圆形" share "圆", and "大" occurs inside "中等大小"
    (sizes are matched longest form first, each occurrence consumed once)."""
    rest = text
    found = []
    for table in (SHAPES_ZH, COLOURS_ZH, SIZES_ZH):
        forms = sorted(((f, k) for k, fs in table.items() for f in set(fs)), key=lambda x: -len(x[0]))
        hits = set()
        for form, key in forms:
            if form in rest:
                hits.add(key)
                rest = rest.replace(form, "\0")
        if len(hits) != 1:
            return -1
        found.append(hits.pop())
    h, c, s = found
    names = [f"{a} {b} {d}" for a in SIZES for b in COLOURS for d in SHAPES]
    return names.index(f"{s} {c} {h}")
