// A minimal OpenEXR writer: one part, scanlines, no compression, 32-bit float channels.
// writeExr(width, height, channels, data) -> Uint8Array; data is Float32Array in H, W, C order.
"use strict";
(function () {
  function channelNames(count) {
    if (count === 1) return ["Y"];
    const names = ["R", "G", "B", "A"].slice(0, count);
    for (let i = 4; i < count; i++) names.push("c" + i);
    return names;
  }
  function writeExr(width, height, channels, data) {
    const names = channelNames(channels);
    const order = names.map((n, i) => [n, i]).sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    const bytes = [];
    const u8 = (v) => bytes.push(v & 255);
    const i32 = (v) => { for (let k = 0; k < 4; k++) u8(v >> (8 * k)); };
    const f32 = (v) => { const b = new Uint8Array(new Float32Array([v]).buffer); b.forEach(u8); };
    const str = (s) => { for (const ch of s) u8(ch.charCodeAt(0)); u8(0); };
    const attr = (name, type, size, write) => { str(name); str(type); i32(size); write(); };
    i32(20000630); i32(2);
    let chlistSize = 1;
    order.forEach(([n]) => { chlistSize += n.length + 1 + 16; });
    attr("channels", "chlist", chlistSize, () => {
      order.forEach(([n]) => { str(n); i32(2); u8(0); u8(0); u8(0); u8(0); i32(1); i32(1); });
      u8(0);
    });
    attr("compression", "compression", 1, () => u8(0));
    const box = () => { i32(0); i32(0); i32(width - 1); i32(height - 1); };
    attr("dataWindow", "box2i", 16, box);
    attr("displayWindow", "box2i", 16, box);
    attr("lineOrder", "lineOrder", 1, () => u8(0));
    attr("pixelAspectRatio", "float", 4, () => f32(1));
    attr("screenWindowCenter", "v2f", 8, () => { f32(0); f32(0); });
    attr("screenWindowWidth", "float", 4, () => f32(1));
    u8(0);
    const headerSize = bytes.length;
    const lineBytes = width * channels * 4;
    const chunk = 8 + lineBytes;
    const tableSize = height * 8;
    const out = new Uint8Array(headerSize + tableSize + height * chunk);
    out.set(bytes, 0);
    const view = new DataView(out.buffer);
    for (let y = 0; y < height; y++) {
      const offset = headerSize + tableSize + y * chunk;
      view.setUint32(headerSize + y * 8, offset % 4294967296, true);
      view.setUint32(headerSize + y * 8 + 4, Math.floor(offset / 4294967296), true);
      view.setInt32(offset, y, true);
      view.setInt32(offset + 4, lineBytes, true);
      let p = offset + 8;
      for (const [, c] of order) {
        for (let x = 0; x < width; x++, p += 4) view.setFloat32(p, data[(y * width + x) * channels + c], true);
      }
    }
    return out;
  }
  window.writeExr = writeExr;
})();
