// ES module entry of portres for Node: the same functions as index.js.
import portres from './index.js';

export const { getPort, getPorts, PortresError } = portres;
export default portres.getPort;
