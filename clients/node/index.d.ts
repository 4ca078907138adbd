// Types of portres for Node (index.js).

export interface Options {
  /** "tcp" (default) or "udp"; the port is reserved for both either way. */
  readonly protocol?: 'tcp' | 'udp';
  /** Ports not to return. */
  readonly exclude?: Iterable<number>;
  /** The portserver address instead of PORTSERVER_ADDRESS (a path, or @name). */
  readonly portserverAddress?: string;
  /** The process to reserve for (default process.pid). */
  readonly pid?: number;
  /** Milliseconds per request (default 5000). */
  readonly timeout?: number;
  /** Resolve an unreserved OS-picked port instead of rejecting (with a warning). */
  readonly fallback?: boolean;
  /** Accepted for get-port compatibility; ignored (the daemon picks). */
  readonly port?: number | Iterable<number>;
  /** Accepted for get-port compatibility; ignored (all addresses are covered). */
  readonly host?: string;
}

export declare class PortresError extends Error {
  readonly code:
    | 'PORTRES_NO_PORTSERVER'
    | 'PORTRES_UNREACHABLE'
    | 'PORTRES_REFUSED'
    | 'PORTRES_TIMEOUT'
    | 'PORTRES_BAD_REPLY'
    | 'PORTRES_EXCLUDED';
}

/** A port reserved on TCP and UDP for the process until it exits. */
export declare function getPort(options?: Options): Promise<number>;

/** `count` distinct such ports. */
export declare function getPorts(count: number, options?: Options): Promise<number[]>;

export default getPort;
