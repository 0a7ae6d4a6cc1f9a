#!/usr/bin/python3
"""Make the image test data of tests/data/image/ (run by hand at dev time,
never by the tests; needs Debian's python3-pil, python3-numpy, imagemagick,
webp and libturbojpeg0).

Every expected value comes from Pillow, an independent decoder/resizer
(Image.open(f).convert("RGB"), ImageOps.exif_transpose, Image.resize,
ImageOps.pad), never from vl2d:

  decode/<name>.<ext>        small images in every format variant
  decode/<name>.rgb.npy      uint8 [h, w, 3]: Pillow's convert("RGB")
  decode/<name>.exif.npy     uint8 [h, w, 3]: after ImageOps.exif_transpose
  resize/src.npy             uint8 [h, w, 3] source (also pattern() below)
  resize/<w>x<h>.npy         Pillow BICUBIC resize of src
  pipeline.txt               official tiling of pattern images, as FNV-1a 64
                             hashes of the uint8 tiles (see the header line)

usage: cd tests/data/image && /usr/bin/python3 make_test_data.py
"""
import ctypes
import io
import math
import os
import subprocess

import numpy as np
from PIL import Image, ImageOps

W, H = 37, 29  # odd sizes: partial MCUs and chroma edges


def photo(w=W, h=H, seed=1):
    """A colourful test picture: gradients, edges and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    r = (x * 255 // max(w - 1, 1))
    g = (y * 255 // max(h - 1, 1))
    b = ((x + y) % 16) * 16
    img = np.stack([r, g, b], axis=-1).astype(np.int32)
    img[h // 3: 2 * h // 3, w // 3: 2 * w // 3] = [250, 20, 40]
    img += rng.integers(-20, 21, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def save_expected(path, im):
    np.save(path, np.asarray(im.convert("RGB"), dtype=np.uint8))


def expect(path):
    with Image.open(path) as im:
        save_expected(path + ".rgb.npy", im)
        print(f"{path}: {im.format} {im.mode} {im.size} {im.info.get('progression', '')}")


def expect_exif(path):
    with Image.open(path) as im:
        save_expected(path + ".rgb.npy", im)
        save_expected(path + ".exif.npy", ImageOps.exif_transpose(im))


def run(*cmd):
    subprocess.run(cmd, check=True)


def ycck_jpeg(path, cmyk):
    """TurboJPEG compresses CMYK pixels into a YCCK JPEG."""
    tj = ctypes.CDLL("libturbojpeg.so.0")
    tj.tjInitCompress.restype = ctypes.c_void_p
    h = tj.tjInitCompress()
    buf = ctypes.POINTER(ctypes.c_ubyte)()
    size = ctypes.c_ulong(0)
    src = np.ascontiguousarray(cmyk)
    TJPF_CMYK, TJSAMP_420 = 11, 2
    r = tj.tjCompress2(ctypes.c_void_p(h), src.ctypes.data_as(ctypes.c_void_p),
                       src.shape[1], 0, src.shape[0], TJPF_CMYK, ctypes.byref(buf),
                       ctypes.byref(size), TJSAMP_420, 90, 0)
    assert r == 0
    with open(path, "wb") as f:
        f.write(ctypes.string_at(buf, size.value))
    tj.tjFree(buf)
    tj.tjDestroy(ctypes.c_void_p(h))


def make_decode():
    os.makedirs("decode", exist_ok=True)
    d = "decode/"
    rgb = Image.fromarray(photo())
    alpha = Image.fromarray(((np.indices((H, W)).sum(0) * 9) % 256).astype(np.uint8))
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    rgba_np = np.asarray(rgba).copy()
    rgba_np[:5, :5, 3] = 0          # fully transparent, colour kept
    rgba = Image.fromarray(rgba_np, "RGBA")
    gray = rgb.convert("L")
    rgb.save(d + "rgb.png")          # source for the command-line tools

    # JPEG
    rgb.save(d + "baseline420.jpg", quality=90)
    rgb.save(d + "baseline444.jpg", quality=90, subsampling=0)
    rgb.save(d + "baseline422.jpg", quality=90, subsampling=1)
    rgb.save(d + "progressive.jpg", quality=85, progressive=True)
    gray.save(d + "gray.jpg", quality=90)
    gray.save(d + "gray_progressive.jpg", quality=90, progressive=True)
    rgb.convert("CMYK").save(d + "cmyk_pil.jpg", quality=95)
    run("convert", d + "rgb.png", "-colorspace", "CMYK", "-quality", "92", d + "cmyk_im.jpg")
    cmyk = np.asarray(rgb.convert("CMYK"))
    ycck_jpeg(d + "ycck.jpg", 255 - cmyk)   # Adobe (inverted) convention
    rgb.save(d + "rgb.ppm")
    run("cjpeg", "-quality", "90", "-sample", "4x1,1x1,1x1", "-outfile", d + "sample411.jpg",
        d + "rgb.ppm")
    run("cjpeg", "-quality", "90", "-sample", "1x2,1x1,1x1", "-outfile", d + "sample440.jpg",
        d + "rgb.ppm")
    run("cjpeg", "-quality", "90", "-rgb", "-outfile", d + "rgb_colorspace.jpg", d + "rgb.ppm")
    os.remove(d + "rgb.ppm")
    for f in ("baseline420.jpg", "baseline444.jpg", "baseline422.jpg", "progressive.jpg",
              "gray.jpg", "gray_progressive.jpg", "cmyk_pil.jpg", "cmyk_im.jpg", "ycck.jpg",
              "sample411.jpg", "sample440.jpg", "rgb_colorspace.jpg"):
        expect(d + f)

    # PNG
    rgba.save(d + "rgba8.png")
    gray.save(d + "gray8.png")
    la = gray.copy()
    la.putalpha(alpha)
    la.save(d + "gray_alpha8.png")
    rgb.convert("1").save(d + "gray1.png")
    pal = rgb.quantize(colors=200)
    pal.save(d + "palette8.png", transparency=3)
    rgb.quantize(colors=16).save(d + "palette4.png", bits=4)
    rgb.quantize(colors=2).save(d + "palette1.png", bits=1)
    run("convert", d + "rgb.png", "-colorspace", "Gray", "-depth", "2",
        "-define", "png:color-type=0", "-define", "png:bit-depth=2", d + "gray2.png")
    run("convert", d + "rgb.png", "-colorspace", "Gray", "-depth", "4",
        "-define", "png:color-type=0", "-define", "png:bit-depth=4", d + "gray4.png")
    g16 = (np.asarray(gray).astype(np.uint16) * 3).astype(np.uint16)  # values up to 765
    Image.fromarray(g16, "I;16").save(d + "gray16.png")
    run("convert", d + "rgb.png", "-depth", "16", "-evaluate", "multiply", "1.0",
        "PNG48:" + d + "rgb16.png")
    run("convert", d + "rgba8.png", "-depth", "16", "PNG64:" + d + "rgba16.png")
    run("convert", d + "gray_alpha8.png", "-depth", "16",
        "-define", "png:color-type=4", "-define", "png:bit-depth=16", d + "gray_alpha16.png")
    run("convert", d + "rgb.png", "-interlace", "PNG", d + "interlaced_rgb8.png")
    run("convert", d + "rgb16.png", "-interlace", "PNG", "PNG48:" + d + "interlaced_rgb16.png")
    pal.save(d + "interlaced_palette_src.png")
    run("convert", d + "interlaced_palette_src.png", "-interlace", "PNG",
        "PNG8:" + d + "interlaced_palette.png")
    os.remove(d + "interlaced_palette_src.png")
    for f in ("rgb.png", "rgba8.png", "gray8.png", "gray_alpha8.png", "gray1.png", "gray2.png",
              "gray4.png", "palette8.png", "palette4.png", "palette1.png", "gray16.png",
              "rgb16.png", "rgba16.png", "gray_alpha16.png", "interlaced_rgb8.png",
              "interlaced_rgb16.png", "interlaced_palette.png"):
        expect(d + f)

    # WebP
    rgba.save(d + "rgba_src.png")
    run("cwebp", "-quiet", "-q", "80", d + "rgb.png", "-o", d + "lossy.webp")
    run("cwebp", "-quiet", "-lossless", d + "rgb.png", "-o", d + "lossless.webp")
    run("cwebp", "-quiet", "-q", "80", d + "rgba_src.png", "-o", d + "lossy_alpha.webp")
    run("cwebp", "-quiet", "-lossless", "-exact", d + "rgba_src.png", "-o",
        d + "lossless_alpha.webp")
    # animation: frame 1 transparent at the borders (the encoder may store a
    # sub-rectangle), frame 2 different
    f1 = rgba_np.copy()
    f1[:, :6, 3] = 0
    f1[:4, :, 3] = 0
    Image.fromarray(f1, "RGBA").save(d + "frame1.png")
    Image.fromarray(np.asarray(rgb)[::-1].copy()).save(d + "frame2.png")
    run("img2webp", "-loop", "0", "-lossy", "-q", "80", d + "frame1.png", "-d", "100",
        d + "frame2.png", "-o", d + "animated.webp")
    for f in ("rgba_src.png", "frame1.png", "frame2.png"):
        os.remove(d + f)
    for f in ("lossy.webp", "lossless.webp", "lossy_alpha.webp", "lossless_alpha.webp",
              "animated.webp"):
        expect(d + f)

    # EXIF orientation: small non-square images, all eight values
    small = Image.fromarray(photo(7, 4, seed=2))
    for o in range(1, 9):
        ex = Image.Exif()
        ex[0x0112] = o
        small.save(d + f"exif{o}.jpg", quality=95, exif=ex.tobytes())
        expect_exif(d + f"exif{o}.jpg")
    ex = Image.Exif()
    ex[0x0112] = 6
    small.save(d + "exif6.png", exif=ex.tobytes())
    expect_exif(d + "exif6.png")
    small.save(d + "exif8.webp", lossless=True, exif=_exif(8))
    expect_exif(d + "exif8.webp")


def _exif(o):
    ex = Image.Exif()
    ex[0x0112] = o
    return ex.tobytes()


def pattern(w, h):
    """Deterministic picture, also computed by the C tests (same formula)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.int64)
    chans = []
    for c in range(3):
        v = (x * 255 // max(w - 1, 1) + c * 85 + ((x // 5 + y // 3) % 2) * 120
             + (x * y * (c + 1)) % 37) % 256
        chans.append(v)
    return np.stack(chans, axis=-1).astype(np.uint8)


def make_resize():
    os.makedirs("resize", exist_ok=True)
    src = pattern(41, 27)
    np.save("resize/src.npy", src)
    im = Image.fromarray(src)
    for w, h in [(1, 1), (41, 1), (1, 27), (41, 13), (20, 27), (7, 5), (82, 54), (100, 9),
                 (3, 90), (384, 253), (13, 40)]:
        np.save(f"resize/{w}x{h}.npy", np.asarray(im.resize((w, h), Image.BICUBIC)))


CANDS = [(384, 384), (384, 768), (768, 384), (384, 1152), (1152, 384), (384, 1536),
         (1536, 384), (768, 768), (384, 1920), (1920, 384), (384, 2304), (2304, 384),
         (768, 1152), (1152, 768), (384, 2688), (2688, 384), (384, 3072), (3072, 384),
         (768, 1536), (1536, 768), (384, 3456), (3456, 384), (1152, 1152)]


def select_best_resolution(w, h):
    best, max_eff, min_waste = None, 0, float("inf")
    for W, H in CANDS:
        scale = min(W / w, H / h)
        dw, dh = int(w * scale), int(h * scale)
        eff = min(dw * dh, w * h)
        waste = W * H - eff
        if eff > max_eff or (eff == max_eff and waste < min_waste):
            max_eff, min_waste, best = eff, waste, (W, H)
    return best


def fnv1a64(b):
    h = 0xcbf29ce484222325
    for byte in b:
        h ^= byte
        h = (h * 0x100000001b3) & 0xffffffffffffffff
    return h


def tiles_of(img, n_images):
    """The official processor's tiles (uint8, CHW per tile)."""
    w, h = img.size
    best = select_best_resolution(w, h) if n_images <= 2 else (384, 384)
    gv = ImageOps.pad(img, (384, 384), method=Image.BICUBIC, color=(127, 127, 127))
    lv = ImageOps.pad(img, best, method=Image.BICUBIC, color=(127, 127, 127))
    tiles = [np.asarray(gv)]
    for i in range(0, best[1], 384):
        for j in range(0, best[0], 384):
            tiles.append(np.asarray(lv.crop((j, i, j + 384, i + 384))))
    arr = np.stack(tiles).transpose(0, 3, 1, 2)
    return best, np.ascontiguousarray(arr)


def make_pipeline():
    sizes = [(1, 1), (2, 3), (384, 384), (383, 385), (385, 383), (4000, 20), (20, 4000),
             (768, 384), (1000, 300), (724, 1086), (1100, 700), (250, 2000), (3000, 1000),
             (640, 480), (1152, 1152), (2, 700), (999, 1)]
    lines = ["# w h n_images best_w best_h fnv1a64(uint8 tiles, CHW, global first)"]
    for w, h in sizes:
        img = Image.fromarray(pattern(w, h))
        for n_images in (1, 3):
            try:
                best, arr = tiles_of(img, n_images)
            except ValueError:   # a side would round to 0 pixels
                lines.append(f"{w} {h} {n_images} error")
                print(lines[-1])
                continue
            lines.append(f"{w} {h} {n_images} {best[0]} {best[1]} "
                         f"{fnv1a64(arr.tobytes()):016x}")
            print(lines[-1])
    with open("pipeline.txt", "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    make_decode()
    make_resize()
    make_pipeline()
