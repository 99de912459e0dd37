// readNpz(bytes): the arrays of an NPZ (numpy's np.savez / np.savez_compressed, and what the gateway
// serves) as { name: { dtype, shape, values } }, in a browser or in Node.js 20+, no dependencies.
// Members may be STORED or DEFLATE-compressed (DecompressionStream), ZIP64 included; arrays must be
// little-endian numbers in C order (what the gateway serves).

const TYPED = {
  "<f8": Float64Array, "<f4": Float32Array, "<i8": BigInt64Array, "<u8": BigUint64Array,
  "<i4": Int32Array, "<u4": Uint32Array, "<i2": Int16Array, "<u2": Uint16Array,
  "|i1": Int8Array, "|u1": Uint8Array, "|b1": Uint8Array,
};

/** { name: { dtype, shape, values } } of an NPZ file's bytes (an ArrayBuffer or Uint8Array). */
export async function readNpz(input) {
  const bytes = plain(input);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const arrays = {};
  for (const entry of centralDirectory(bytes, view)) {
    const start = entry.offset + 30 + view.getUint16(entry.offset + 26, true) + view.getUint16(entry.offset + 28, true);
    const stored = bytes.subarray(start, start + entry.compressedSize);
    const data = entry.method === 0 ? stored
      : entry.method === 8 ? await inflate(stored)
      : fail(`${entry.name}: compression method ${entry.method} is not STORED or DEFLATE`);
    arrays[entry.name.replace(/\.npy$/, "")] = readNpy(data, entry.name);
  }
  return arrays;
}

/** { dtype, shape, values } of one .npy file's bytes (format 1.0 to 3.0). */
export function readNpy(input, name = "array") {
  const bytes = plain(input);
  const magic = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY
  if (!magic.every((b, i) => bytes[i] === b)) fail(`${name} is not an .npy file`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const [length, offset] = bytes[6] === 1 ? [view.getUint16(8, true), 10] : [view.getUint32(8, true), 12];
  const header = new TextDecoder().decode(bytes.subarray(offset, offset + length));
  const dtype = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const shape = (/'shape':\s*\(([^)]*)\)/.exec(header)?.[1] ?? "").split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  if (/'fortran_order':\s*True/.test(header)) fail(`${name}: Fortran order is not supported`);
  const Typed = TYPED[dtype] ?? fail(`${name}: dtype ${dtype} is not a little-endian number type`);
  const count = shape.reduce((a, b) => a * b, 1);
  const start = offset + length;
  // Copied into a buffer of its own: a member's data need not be aligned for the typed array.
  const values = new Typed(bytes.slice(start, start + count * Typed.BYTES_PER_ELEMENT).buffer);
  if (values.length !== count) fail(`${name}: ${values.length} values for shape [${shape}]`);
  return { dtype, shape, values };
}

function* centralDirectory(bytes, view) {
  let end = bytes.length - 22;
  while (end >= 0 && view.getUint32(end, true) !== 0x06054b50) end -= 1;
  if (end < 0) fail("not a zip archive (no end of central directory)");
  let count = view.getUint16(end + 10, true);
  let at = view.getUint32(end + 16, true);
  if (end >= 20 && view.getUint32(end - 20, true) === 0x07064b50) { // ZIP64 end of central directory
    const zip64 = Number(view.getBigUint64(end - 12, true));
    count = Number(view.getBigUint64(zip64 + 32, true));
    at = Number(view.getBigUint64(zip64 + 48, true));
  }
  for (let i = 0; i < count; i++) {
    if (view.getUint32(at, true) !== 0x02014b50) fail("corrupt zip central directory");
    const nameLength = view.getUint16(at + 28, true), extraLength = view.getUint16(at + 30, true);
    const entry = {
      method: view.getUint16(at + 10, true),
      compressedSize: view.getUint32(at + 20, true),
      size: view.getUint32(at + 24, true),
      offset: view.getUint32(at + 42, true),
      name: new TextDecoder().decode(bytes.subarray(at + 46, at + 46 + nameLength)),
    };
    zip64Sizes(view, at + 46 + nameLength, extraLength, entry);
    yield entry;
    at += 46 + nameLength + extraLength + view.getUint16(at + 32, true);
  }
}

/** Replace 0xFFFFFFFF sizes and offset with their ZIP64 extra field values (in that order). */
function zip64Sizes(view, at, length, entry) {
  for (let p = at; p + 4 <= at + length; p += 4 + view.getUint16(p + 2, true)) {
    if (view.getUint16(p, true) !== 0x0001) continue;
    let q = p + 4;
    for (const key of ["size", "compressedSize", "offset"]) {
      if (entry[key] === 0xffffffff) { entry[key] = Number(view.getBigUint64(q, true)); q += 8; }
    }
  }
}

async function inflate(data) {
  const stream = new Blob([data]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** A plain Uint8Array over the same memory (Node's Buffer.slice does not copy). */
function plain(input) {
  return ArrayBuffer.isView(input) ? new Uint8Array(input.buffer, input.byteOffset, input.byteLength) : new Uint8Array(input);
}

function fail(message) {
  throw new Error(message);
}
