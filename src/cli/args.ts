import type { Writable } from "node:stream";
import type { ParseArgsConfig } from "node:util";
import { parseArgs } from "node:util";
import { AppError } from "../errors.js";

/** The exit code of a command line petrel cannot read (sysexits' EX_USAGE). */
export const USAGE_EXIT = 64;

/** A command line petrel cannot read: one line of our own wording, exit 64. */
export class UsageError extends AppError {
  readonly exit = USAGE_EXIT;
  constructor(message: string) {
    super("usage", message);
    this.name = "UsageError";
  }
}

type OptionsConfig = NonNullable<ParseArgsConfig["options"]>;
const HELP = { help: { type: "boolean", short: "h" } } as const;
type WithHelp<O extends OptionsConfig> = O & typeof HELP;
export type Parsed<O extends OptionsConfig> = ReturnType<
  typeof parseArgs<{ args: string[]; options: WithHelp<O>; allowPositionals: true; strict: true }>
>;

/** `petrel builds` from "usage: petrel builds [--repo R] ...": the words before the first placeholder or option. */
export function commandOf(usage: string): string {
  const words = /^usage:\s+(.*)$/m.exec(usage)?.[1]?.split(/\s+/) ?? ["petrel"];
  const name: string[] = [];
  for (const word of words) {
    if (!/^[a-z][a-z-]*$/.test(word)) break;
    name.push(word);
  }
  return name.join(" ") || "petrel";
}

/** The pointer every usage error ends with. */
export function seeHelp(usage: string): string {
  return `see \`${commandOf(usage)} --help\``;
}

/**
 * Reads a command's arguments against its options (`--help`/`-h` is always one). Anything else on the line is
 * a UsageError with one line in petrel's words, never Node's parser message. Returns undefined when `--help`
 * was asked for, after printing `usage` to `stdout`: the command then does nothing else.
 */
export function parseCommandArgs<const O extends OptionsConfig>(
  argv: readonly string[],
  options: O,
  usage: string,
  io: { stdout: Writable },
  settings: { positionals?: boolean } = {},
): Parsed<O> | undefined {
  const all = { ...options, ...HELP } as WithHelp<O>;
  const allowPositionals = settings.positionals ?? true;
  const { tokens } = parseArgs({ args: [...argv], options: all, allowPositionals: true, strict: false, tokens: true });
  let help = false;
  let problem: string | undefined;
  for (const token of tokens) {
    if (token.kind === "option") {
      const spec = all[token.name];
      if (token.name === "help") help = true;
      if (problem !== undefined) continue;
      if (spec === undefined) problem = `unknown option ${token.rawName}`;
      else if (spec.type === "string" && (token.value === undefined || (!token.inlineValue && /^-./.test(token.value)))) {
        problem = `${token.rawName} needs a value`;
      } else if (spec.type === "boolean" && token.value !== undefined) problem = `${token.rawName} takes no value`;
    } else if (token.kind === "positional" && !allowPositionals && problem === undefined) {
      problem = `unexpected argument ${JSON.stringify(token.value)}`;
    }
  }
  // --help wins over everything else on the line: asking how to use a command is never an error.
  if (help) {
    io.stdout.write(usage.endsWith("\n") ? usage : `${usage}\n`);
    return undefined;
  }
  if (problem !== undefined) throw new UsageError(`${problem}; ${seeHelp(usage)}`);
  try {
    return parseArgs({ args: [...argv], options: all, allowPositionals, strict: true });
  } catch {
    // The checks above cover what the strict parser refuses; this is the net under them.
    throw new UsageError(`cannot read the arguments ${JSON.stringify(argv.join(" "))}; ${seeHelp(usage)}`);
  }
}

/** Throws a UsageError unless exactly `count` positionals were given. */
export function expectPositionals(positionals: readonly string[], count: number, usage: string): void {
  if (positionals.length < count) throw new UsageError(`missing argument; ${seeHelp(usage)}`);
  if (positionals.length > count) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[count])}; ${seeHelp(usage)}`);
}

/** True when a subcommand dispatcher (`petrel repo`, `petrel builder`) is asked for its own help. */
export function asksForHelp(word: string | undefined): boolean {
  return word === "--help" || word === "-h" || word === "help";
}
