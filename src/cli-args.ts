/**
 * Argument parsing shared by every `weft` subcommand, so that each answers the same way:
 * `--help`/`-h` prints the subcommand's usage on stdout and exits 0; a flag it does not know,
 * a missing value or a stray argument prints ONE line on stderr and exits 2 (the exit code
 * of a usage error, as getopt-style tools use). node:util's parseArgs throws a TypeError for
 * those, which reached the top of the process as a stack trace and exit 1.
 */
import { parseArgs, type ParseArgsOptionsConfig } from 'node:util';

/** `--help` or `-h` was given: print `usage` on stdout, exit 0. */
export class HelpRequested extends Error {
  constructor(
    readonly command: string,
    readonly usage: string,
  ) {
    super(`${command} --help`);
  }
}

/** The command line is wrong: print `weft <command>: <message>` on stderr, exit 2. */
export class UsageError extends Error {
  constructor(
    readonly command: string,
    message: string,
  ) {
    super(message);
  }

  /** The one line printed for it. */
  line(): string {
    return `${this.command}: ${this.message} (see '${this.command} --help')`;
  }
}

export const EXIT_USAGE = 2;

/** True when `--help`/`-h` comes before any `--` terminator. */
export function wantsHelp(args: readonly string[]): boolean {
  for (const a of args) {
    if (a === '--') return false;
    if (a === '--help' || a === '-h') return true;
  }
  return false;
}

/**
 * parseArgs in strict mode, with `--help` and parse errors turned into
 * {@link HelpRequested} / {@link UsageError}. `positionals` is how many plain arguments the
 * command takes (default none).
 */
export function parseCommandArgs<T extends ParseArgsOptionsConfig>(command: string, usage: string, args: string[], options: T, positionals = 0) {
  if (wantsHelp(args)) throw new HelpRequested(command, usage);
  let parsed: ReturnType<typeof parseArgs<{ args: string[]; options: T; strict: true; allowPositionals: boolean }>>;
  try {
    parsed = parseArgs({ args, options, strict: true, allowPositionals: positionals > 0 });
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS')) throw new UsageError(command, oneLine((err as Error).message));
    throw err;
  }
  if (parsed.positionals.length > positionals) {
    throw new UsageError(command, `unexpected argument '${parsed.positionals[positionals]}'`);
  }
  return parsed;
}

/** parseArgs' messages carry advice on a second line ("To specify a positional argument starting with a '-' ..."): keep the first. */
function oneLine(message: string): string {
  return message.split('\n')[0]!.trim();
}

/**
 * Writes what a {@link HelpRequested} or {@link UsageError} says and returns the exit code;
 * anything else is rethrown.
 */
export function reportUsage(err: unknown, stdout: NodeJS.WritableStream, stderr: NodeJS.WritableStream): number {
  if (err instanceof HelpRequested) {
    stdout.write(`${err.usage}\n`);
    return 0;
  }
  if (err instanceof UsageError) {
    stderr.write(`${err.line()}\n`);
    return EXIT_USAGE;
  }
  throw err;
}
