// The CLI with the eval command, for eval_cli.test.ts to run in a child
// process (the test runner's own output goes to stdout, so the command's
// output cannot be captured in-process).
import { evalCommand } from '../../src/cli/commands/eval';
import { main } from '../../src/cli/index';

main(process.argv.slice(2), { commands: [evalCommand] }).then((code) => (process.exitCode = code));
