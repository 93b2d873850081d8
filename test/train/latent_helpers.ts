// Moved to test/helpers/configs.ts; kept for the importers under test/dist.
export { FIX, tinyLdmYaml, writeYamlIn } from '../helpers/configs';
