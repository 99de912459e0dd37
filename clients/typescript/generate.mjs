// Generates src/schema.d.ts from the gateway's committed OpenAPI document (../../openapi/openapi.json)
// with openapi-typescript, typing binary strings (upload parts, downloads) as Blob and the form's
// `layer_<n>` parts (patternProperties, which would otherwise become a string index that also
// swallows `file` and `weighting`) as `layer_${number}` keys.
//
//   node generate.mjs            write src/schema.d.ts
//   node generate.mjs --check    exit 1 if src/schema.d.ts is not what the document generates

import { readFile, writeFile } from "node:fs/promises";
import openapiTS, { astToString, transformSchemaObject } from "openapi-typescript";
import ts from "typescript";

const DOCUMENT = new URL("../../openapi/openapi.json", import.meta.url);
const TARGET = new URL("./src/schema.d.ts", import.meta.url);
const f = ts.factory;
const BLOB = f.createTypeReferenceNode(f.createIdentifier("Blob"));

/** `^prefix_(digits)$` -> an index signature `[key: \`prefix_${number}\`]: type`. */
function numberedKeys(pattern, type) {
  const prefix = /^\^([A-Za-z_]+)\(.*\)\$$/.exec(pattern)?.[1];
  if (prefix === undefined) throw new Error(`no TypeScript key type for the pattern ${pattern}`);
  const key = f.createTemplateLiteralType(f.createTemplateHead(prefix), [
    f.createTemplateLiteralTypeSpan(
      f.createKeywordTypeNode(ts.SyntaxKind.NumberKeyword),
      f.createTemplateTail(""),
    ),
  ]);
  const parameter = f.createParameterDeclaration(undefined, undefined, "key", undefined, key);
  return f.createIndexSignature(undefined, [parameter], type);
}

const ast = await openapiTS(DOCUMENT, {
  transform(schema, options) {
    if (schema.format === "binary") return BLOB;
    if (schema.patternProperties) {
      const { patternProperties, ...rest } = schema;
      const keys = Object.entries(patternProperties).map(([pattern, value]) =>
        numberedKeys(pattern, transformSchemaObject(value, options)),
      );
      return f.createIntersectionTypeNode([
        transformSchemaObject(rest, options),
        f.createTypeLiteralNode(keys),
      ]);
    }
    return undefined;
  },
});
const generated = astToString(ast);

if (process.argv.includes("--check")) {
  const committed = await readFile(TARGET, "utf8").catch(() => "");
  if (committed !== generated) {
    console.error("src/schema.d.ts is out of date: run `npm run generate` in clients/typescript.");
    process.exit(1);
  }
  console.log("src/schema.d.ts is up to date");
} else {
  await writeFile(TARGET, generated);
  console.log(`wrote ${TARGET.pathname}`);
}
