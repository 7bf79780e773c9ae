// @ts-check
// Prettier's settings, chosen by measurement to rewrite as little of the
// existing code as possible (docs/ARCHITECTURE.md "Lint and format"). The
// code keeps one statement per line and wraps only long calls, so the width
// is wide; everything not set here is Prettier's default, which the code
// already follows: semicolons, two-space indent, trailing commas everywhere
// ('es5' or 'none' would rewrite more), parentheses around every arrow
// parameter ('avoid' would rewrite more).

/** @type {import('prettier').Config} */
export default {
  printWidth: 200,
  singleQuote: true,
};
