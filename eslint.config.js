// @ts-check
// Lint for the whole repository (README.md "Development"; what it enforces
// and why: docs/ARCHITECTURE.md "Lint and format"). TypeScript files are
// linted with type information: each file's nearest tsconfig.json
// (packages/*/tsconfig.json for src; for tests, packages/*/test,
// packages/base/test-support and test/ each have one extending
// tsconfig.tests.json) gives its types. Formatting is Prettier's
// job (prettier.config.js), so no rule here is about layout.
import js from '@eslint/js';
import { defineConfig, globalIgnores } from 'eslint/config';
import globals from 'globals';
import tseslint from 'typescript-eslint';

/** Relaxed: numbers are allowed, since block sizes, offsets and counts are interpolated into messages all over and Number#toString is exact for them. */
const templateExpressions = { allowNumber: true, allowBoolean: false, allowNullish: false, allowAny: false, allowRegExp: false, allowNever: false };

export default defineConfig(
  globalIgnores(['**/dist/', '**/node_modules/', 'coverage/', 'bench/results/', 'tmp/', '**/*.d.ts']),

  {
    files: ['**/*.{ts,js,mjs}'],
    extends: [js.configs.recommended],
    linterOptions: { reportUnusedDisableDirectives: 'error' },
  },

  {
    files: ['**/*.ts'],
    extends: [tseslint.configs.strictTypeChecked, tseslint.configs.stylisticTypeChecked],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      '@typescript-eslint/restrict-template-expressions': ['error', templateExpressions],
      // Relaxed: arrays of object, tuple or union types read better as
      // Array<{ ... }>, the code's style for them; simple ones stay T[].
      '@typescript-eslint/array-type': ['error', { default: 'array-simple' }],
      // Relaxed: `(err) => reject(err)` and `() => resolve()` are the code's
      // idiom for wiring callbacks; a void returned through an arrow
      // shorthand confuses no one. Void in other returns is still an error.
      '@typescript-eslint/no-confusing-void-expression': ['error', { ignoreArrowShorthand: true }],
      // Off: `async` on a function that implements a Promise-returning seam
      // (BlockDevice, journal hooks, test doubles) is deliberate — it turns a
      // synchronous throw into a rejection, which is what callers handle.
      // Missing awaits are caught by no-floating-promises and await-thenable.
      '@typescript-eslint/require-await': 'off',
      // A promise nobody awaits loses its rejection: a lost commit or sync
      // error is a lost write (strictTypeChecked has it; stated here so it
      // stays on whatever the preset does).
      '@typescript-eslint/no-floating-promises': 'error',
      // Workspace packages export only their root; a path into another
      // package's src/ or dist/ couples to its insides and skips its build.
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            // The subpaths packages export on purpose: @cowvol/base's
            // BlockDevice conformance suite, which tests of every device run,
            // and @cowvol/backup's limits, which the CLI's start module
            // imports without the AWS SDK (docs/PERFORMANCE.md, "CLI start").
            {
              group: ['@cowvol/*/*', '!@cowvol/base/conformance', '@cowvol/base/conformance/*', '!@cowvol/backup/limits'],
              message:
                'Import a workspace package by its name only (@cowvol/<package>) or a subpath its package.json exports (@cowvol/base/conformance, @cowvol/backup/limits); export what you need from its index.',
            },
            { regex: '^(\\.\\./)+(packages/)?[\\w-]+/(src|dist)(/|$)', message: "Do not reach into another package's src/ or dist/: import @cowvol/<package>." },
          ],
        },
      ],
    },
  },

  // Shipped library code: the error taxonomy and the size limits
  // (docs/ARCHITECTURE.md "Lint and format").
  {
    files: ['packages/*/src/**/*.ts'],
    rules: {
      // Relaxed to what no-restricted-syntax below forbids: `a[i]!` is the
      // price noUncheckedIndexedAccess asks for an index the loop has already
      // bounded, and a check there would run per block. Every other `!`
      // (`x!`, `map.get(k)!`, `list.pop()!`) hides a case the code should
      // name: check it and throw a named error, or assert.
      '@typescript-eslint/no-non-null-assertion': 'off',
      'no-restricted-syntax': [
        'error',
        {
          selector: 'ThrowStatement > :matches(NewExpression, CallExpression)[callee.name=/^(Error|RangeError|TypeError)$/]',
          message: 'Library code throws a named CowvolError subclass with a stable code, never a plain Error/RangeError/TypeError.',
        },
        {
          selector: "TSNonNullExpression:not([expression.type='MemberExpression'][expression.computed=true])",
          message: 'Only an indexed access the code has bounded may use `!` (a[i]!); check any other maybe-undefined value and throw a named error, or assert.',
        },
      ],
      'max-lines': ['error', { max: 400, skipBlankLines: true, skipComments: true }],
      'max-lines-per-function': ['error', { max: 70, skipBlankLines: true, skipComments: true, IIFEs: true }],
    },
  },

  // Tests: a wrong `!` fails the test with a TypeError, which is what a test
  // should do, so tests may use it freely (relaxed from strictTypeChecked).
  {
    files: ['packages/*/test/**/*.ts', 'packages/*/test-support/**/*.ts', 'test/**/*.ts'],
    rules: { '@typescript-eslint/no-non-null-assertion': 'off' },
  },

  // Scripts (bench/, test child processes) are plain ESM JavaScript for Node:
  // no tsconfig describes them, so they get ESLint's untyped rules only.
  {
    files: ['**/*.{js,mjs}'],
    languageOptions: { globals: globals.node },
  },
);
