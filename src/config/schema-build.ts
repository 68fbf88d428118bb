/**
 * Build step (scripts/build.sh runs `node dist/src/config/schema-build.js`): compiles
 * CONFIG_SCHEMA into JavaScript once, with ajv's standalone code, and writes it beside
 * schema.js as schema-validator.cjs. The agent then validates its config without loading
 * ajv or compiling the schema (~400 ms of CPU at start-up, schema.ts). The file carries
 * schemaHash(): schema.ts compiles at run time instead when it does not match.
 *
 * The module exports a function of the formats and keywords (SCHEMA_FORMATS, SCHEMA_KEYWORDS)
 * rather than requiring schema.js for them: the agent's bundle (scripts/bundle.js) has no
 * schema.js beside it, and a require of dist/src/config/schema.js from there would load a
 * second copy of the config modules.
 */
import { renameSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { _, type Ajv } from 'ajv';
import type { AnyValidateFunction } from 'ajv/dist/types/index.js';
import type { ValueScopeName } from 'ajv/dist/compile/codegen/scope.js';
import standaloneModule from 'ajv/dist/standalone/index.js';
import { CONFIG_SCHEMA, PRECOMPILED_VALIDATOR, SCHEMA_KEYWORDS, configAjv, schemaHash } from './schema.js';

/** The validator module's source (CommonJS: ajv's runtime helpers are required by it). */
export function validatorModuleSource(): string {
  const ajv = configAjv({ code: { source: true, formats: _`weftSchema.SCHEMA_FORMATS` } });
  const validate = ajv.compile(CONFIG_SCHEMA);
  // ajv has no code for a keyword's validate function: the module takes each from its argument.
  const keywords = (ajv.scope as unknown as { _values: Record<string, Map<unknown, ValueScopeName> | undefined> })._values.keyword;
  for (const name of keywords?.values() ?? []) {
    const key = Object.entries(SCHEMA_KEYWORDS).find(([, fn]) => fn === name.value?.ref)?.[0];
    if (!key || !name.value) throw new Error(`schema-build: a keyword function that is not in SCHEMA_KEYWORDS: ${String(name)}`);
    name.value.code = _`weftSchema.SCHEMA_KEYWORDS[${key}]`;
  }
  // A CommonJS module: its default export is itself, with .default = itself.
  const standaloneCode = (standaloneModule as unknown as { default: (ajv: Ajv, v: AnyValidateFunction) => string }).default;
  const source = standaloneCode(ajv, validate);
  if (!source.startsWith('"use strict";')) throw new Error('schema-build: ajv standalone code no longer starts with "use strict"');
  // ajv calls keyword functions with its instance as `this` (named self); SCHEMA_KEYWORDS use none.
  // The generated code assigns module.exports: give it a module of its own inside the function.
  return (
    `"use strict";\nmodule.exports = function configValidator(weftSchema) {\nconst self = undefined;\nconst module = { exports: {} };\n` +
    `${source.slice('"use strict";'.length)}\nreturn module.exports;\n};\nmodule.exports.schemaHash = ${JSON.stringify(schemaHash())};\n`
  );
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const out = join(dirname(fileURLToPath(import.meta.url)), PRECOMPILED_VALIDATOR);
  writeFileSync(`${out}.tmp`, validatorModuleSource());
  renameSync(`${out}.tmp`, out);
}
