//! The stack language as the reference page (`ralph-deploy reference
//! language`, docs/language.md) explains it: every key a stack, an
//! environment, a resource, a component and a component use take, every
//! expression form, function and type, each with an example that is a
//! whole stack file. A test validates every example with the binary, and a
//! unit test below keeps the lists equal to the keys the loader accepts.

/// One documented word of the language.
pub struct Entry {
    /// As written in a stack file (`for_each`, `${var.NAME}`, `cidrsubnet`).
    pub name: &'static str,
    /// What it means, including what leaving it out means.
    pub what: &'static str,
    /// A whole stack file that validates and uses it. Where a component is
    /// needed, the component file follows a line `# file: PATH`.
    pub example: &'static str,
}

/// The heading, the introduction and the entries of one section.
pub struct Section {
    pub title: &'static str,
    pub intro: &'static str,
    pub entries: &'static [Entry],
}

macro_rules! stack {
    ($body:literal) => {
        concat!(
            "name: example\ncloud:\n  aws: { region: us-east-1 }\n",
            $body
        )
    };
}

pub const SECTIONS: &[Section] = &[
    Section {
        title: "Top-level keys",
        intro: "A stack file is a YAML mapping. Only `name` and `resources` (or `components`) are required; a key not listed here is an error.",
        entries: &[
            Entry {
                name: "name",
                what: "The stack's name: 1 to 40 lowercase letters, digits and hyphens, starting with a letter. It goes into every resource's ownership tags and default `Name` tag, and names the state (`<name>/<environment>`). Two stack files with one name manage the same resources.",
                example: stack!("resources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: 10.0.0.0/16 }\n"),
            },
            Entry {
                name: "description",
                what: "Free text for people; ignored by the tool.",
                example: stack!("description: the network of the example service\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: 10.0.0.0/16 }\n"),
            },
            Entry {
                name: "cloud",
                what: "Where the resources live: `aws` (`region`, `profile`, `endpoint`) and `gcp` (`project`, `region`, `endpoint`). Without `cloud`, or without one of its settings, the cloud's own environment decides: the AWS credential chain (AWS_REGION, AWS_PROFILE, AWS_ENDPOINT_URL) and, for Google Cloud, GOOGLE_CLOUD_PROJECT and RALPH_DEPLOY_GCP_ENDPOINT. `endpoint` points the tool at a stand-in cloud, such as the local cloud of this repository.",
                example: "name: example\ncloud:\n  aws:\n    region: eu-west-2\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: 10.0.0.0/16 }\n",
            },
            Entry {
                name: "variables",
                what: "Named values set from outside: each has a `type` (see Types), an optional `default` and a `description`. A variable without a default must be given: `--var name=value`, `--var-file FILE`, or RALPH_DEPLOY_VAR_<name> in the environment (the command line wins). Refer to one as `${var.NAME}`.",
                example: stack!("variables:\n  cidr:\n    type: string\n    default: 10.0.0.0/16\n    description: the network's range\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: \"${var.cidr}\" }\n"),
            },
            Entry {
                name: "environments",
                what: "Named overlays (production, staging): each may set `variables` (values in place of their defaults), `cloud`, `resources` (properties merged over the base, `enabled: false`, or a new resource with its `kind`) and add `waivers`. Pick one with `--env NAME` or RALPH_DEPLOY_ENV (required when there are several); without environments the environment is `default`. Each environment has its own state.",
                example: stack!("variables:\n  cidr: { type: string, default: 10.0.0.0/16 }\nenvironments:\n  staging:\n    variables:\n      cidr: 10.1.0.0/16\n  production: {}\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: \"${var.cidr}\" }\n"),
            },
            Entry {
                name: "resources",
                what: "The resources, by address (lowercase letters, digits, `_` and `-`). Each takes the keys of the next section. `ralph-deploy reference stack` (docs/stack-reference.md) lists every kind's properties and attributes.",
                example: stack!("resources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: 10.0.0.0/16 }\n  subnet:\n    kind: aws.subnet\n    properties:\n      vpc_id: ${vpc.id}\n      cidr_block: 10.0.1.0/24\n      availability_zone: us-east-1a\n"),
            },
            Entry {
                name: "components",
                what: "Uses of component files: a reusable set of resources with `inputs` and `outputs` (see Component files). Each use gets addresses of its own, `NAME.RESOURCE`.",
                example: concat!(
                    "name: example\ncloud:\n  aws: { region: us-east-1 }\ncomponents:\n  net:\n    source: components/net.yaml\n    inputs:\n      cidr: 10.0.0.0/16\noutputs:\n  vpc_id:\n    value: ${net.vpc_id}\n",
                    "# file: components/net.yaml\ndescription: one network\ninputs:\n  cidr: { type: string }\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: \"${input.cidr}\" }\noutputs:\n  vpc_id: ${vpc.id}\n"
                ),
            },
            Entry {
                name: "outputs",
                what: "Values printed after apply and by `ralph-deploy output` (`--json` for scripts), each a `value` and an optional `description`; recorded in the state. Never secrets.",
                example: stack!("resources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: 10.0.0.0/16 }\noutputs:\n  vpc_id:\n    value: ${vpc.id}\n    description: the network's id\n"),
            },
            Entry {
                name: "moved",
                what: "Renames: `{ from: OLD, to: NEW }` moves the state's record of a resource to a new address (a rename, a move into a component or a `for_each` instance) instead of deleting and creating it. `to` must be declared; `from` must not be.",
                example: stack!("moved:\n  - { from: network, to: vpc }\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: 10.0.0.0/16 }\n"),
            },
            Entry {
                name: "import",
                what: "Existing cloud resources to take under management: `{ to: ADDRESS, id: CLOUD_ID }`. The next plan reads the resource by id and records it instead of creating one; after that the entry may go.",
                example: stack!("import:\n  - { to: vpc, id: vpc-0123456789abcdef0 }\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: 10.0.0.0/16 }\n"),
            },
            Entry {
                name: "state",
                what: "Where the state lives for everyone who runs the stack: `url` (s3://bucket/prefix or postgres://user@host/database), `encrypt` and `kms_key`. Without it: local files under `.ralph-deploy/state` at the root of the stack file's repository (or beside the stack file outside one), whatever the current directory; `--state` and `--state-dir` override.",
                example: stack!("state:\n  url: s3://example-terraform-state/ralph\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: 10.0.0.0/16 }\n"),
            },
            Entry {
                name: "recovery",
                what: "Recovery objectives: `rpo` (the oldest a backup may be; `status` checks it) and `rto` (how long a failover may take). Durations such as 90s, 30m, 1h30m.",
                example: stack!("recovery:\n  rpo: 1h\n  rto: 4h\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: 10.0.0.0/16 }\n"),
            },
            Entry {
                name: "waivers",
                what: "`check` findings accepted on purpose: `rule` (an id from docs/check-rules.md), optionally `address`, a `reason` (required) and `until` (a date after which the waiver lapses). An environment may add its own.",
                example: stack!("waivers:\n  - rule: stores.high-availability\n    reason: a single-zone sandbox\n    until: 2027-06-30\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: 10.0.0.0/16 }\n"),
            },
            Entry {
                name: "policies",
                what: "Rego files (paths relative to the stack file) whose `deny` and `warn` rules `check`, `plan` and `apply` add to the built-in rules (docs/policies/ has examples).",
                example: stack!("policies: []\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: 10.0.0.0/16 }\n"),
            },
        ],
    },
    Section {
        title: "Resource keys",
        intro: "Each entry under `resources` (and under a component file's `resources`).",
        entries: &[
            Entry {
                name: "kind",
                what: "What the resource is: `aws.vpc`, `gcp.sql_instance`, `kubernetes.orchestrator`, ... (docs/stack-reference.md lists them all). Required.",
                example: stack!("resources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: 10.0.0.0/16 }\n"),
            },
            Entry {
                name: "properties",
                what: "The kind's properties. Unknown ones are errors (with a did-you-mean); a required one left out is an error; defaults are filled in. Values may be literals or expressions.",
                example: stack!("resources:\n  vpc:\n    kind: aws.vpc\n    properties:\n      cidr_block: 10.0.0.0/16\n      enable_dns_hostnames: true\n"),
            },
            Entry {
                name: "depends_on",
                what: "Addresses to wait for beyond those the properties refer to (a reference is already a dependency). A component use's name stands for all its resources; a `for_each` resource's name for all its instances; a resource disabled in this environment for nothing.",
                example: stack!("resources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: 10.0.0.0/16 }\n  other:\n    kind: aws.vpc\n    depends_on: [vpc]\n    properties: { cidr_block: 10.1.0.0/16 }\n"),
            },
            Entry {
                name: "protect",
                what: "`true`: plan and apply refuse to delete or replace it unless run with --allow-protected. For data: databases, buckets, secrets.",
                example: stack!("resources:\n  vpc:\n    kind: aws.vpc\n    protect: true\n    properties: { cidr_block: 10.0.0.0/16 }\n"),
            },
            Entry {
                name: "enabled",
                what: "`false` leaves the resource out of this environment (usually set in an environment's overlay). References to it are then errors that say so; `depends_on` on it waits for nothing.",
                example: stack!("environments:\n  staging:\n    resources:\n      replica: { enabled: false }\n  production: {}\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: 10.0.0.0/16 }\n  replica:\n    kind: aws.vpc\n    properties: { cidr_block: 10.1.0.0/16 }\n"),
            },
            Entry {
                name: "description",
                what: "Free text for people; ignored by the tool.",
                example: stack!("resources:\n  vpc:\n    kind: aws.vpc\n    description: the service's network\n    properties: { cidr_block: 10.0.0.0/16 }\n"),
            },
            Entry {
                name: "timeouts",
                what: "How long `create`, `update` and `delete` may take before the run stops waiting (the resource is recorded as still becoming ready; the next apply waits again). Durations such as 90s, 20m, 1h30m; each kind has its own defaults.",
                example: stack!("resources:\n  vpc:\n    kind: aws.vpc\n    timeouts: { create: 5m, delete: 10m }\n    properties: { cidr_block: 10.0.0.0/16 }\n"),
            },
            Entry {
                name: "for_each",
                what: "One instance per element of a list or per key of a mapping (a literal, `${var.NAME}` or `${input.NAME}`). Inside, `${each.key}` and `${each.value}`. Instances are addressed `NAME[\"KEY\"]`; `${NAME[*].attr}` is the list of every instance's attribute.",
                example: stack!("resources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: 10.0.0.0/16 }\n  subnet:\n    kind: aws.subnet\n    for_each: { a: 1, b: 2 }\n    properties:\n      vpc_id: ${vpc.id}\n      cidr_block: ${cidrsubnet(\"10.0.0.0/16\", 8, each.value)}\n      availability_zone: us-east-1${each.key}\noutputs:\n  subnets:\n    value: ${subnet[*].id}\n"),
            },
        ],
    },
    Section {
        title: "Environment keys",
        intro: "What an entry under `environments` may change. Everything else is the same in every environment.",
        entries: &[
            Entry {
                name: "variables",
                what: "Values for the stack's variables in this environment (`name: value`), in place of their defaults; the command line still wins.",
                example: stack!("variables:\n  size: { type: number, default: 3 }\nenvironments:\n  staging:\n    variables:\n      size: 1\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: 10.0.0.0/16 }\n"),
            },
            Entry {
                name: "cloud",
                what: "Settings merged over the stack's `cloud` (another region or project for this environment).",
                example: stack!("environments:\n  dr:\n    cloud:\n      aws: { region: us-west-2 }\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: 10.0.0.0/16 }\n"),
            },
            Entry {
                name: "resources",
                what: "Per resource: properties merged over the base (a mapping merges key by key, anything else replaces), `enabled: false`, or a whole new resource with its `kind`. Overriding an address the stack does not declare is an error.",
                example: stack!("environments:\n  staging:\n    resources:\n      vpc:\n        properties: { cidr_block: 10.1.0.0/16 }\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: 10.0.0.0/16 }\n"),
            },
            Entry {
                name: "waivers",
                what: "Waivers for this environment only, added to the stack's.",
                example: stack!("environments:\n  staging:\n    waivers:\n      - { rule: stores.replica, reason: no replica in staging }\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: 10.0.0.0/16 }\n"),
            },
        ],
    },
    Section {
        title: "Expressions",
        intro: "A value containing `${...}` is an expression. A value that is only `${...}` keeps the type of what it names (a number, a list); anything around it makes a string. References make dependencies: the graph, and so the order of apply, comes from them.",
        entries: &[
            Entry {
                name: "${var.NAME}",
                what: "A variable's value.",
                example: stack!("variables:\n  cidr: { type: string, default: 10.0.0.0/16 }\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: \"${var.cidr}\" }\n"),
            },
            Entry {
                name: "${ADDRESS.ATTRIBUTE}",
                what: "An attribute of another resource (its `id`, or one docs/stack-reference.md lists for its kind), or one of its properties. Known after that resource is applied: a plan shows `(known after apply: ADDRESS.ATTRIBUTE)` until then.",
                example: stack!("resources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: 10.0.0.0/16 }\n  subnet:\n    kind: aws.subnet\n    properties:\n      vpc_id: ${vpc.id}\n      cidr_block: 10.0.1.0/24\n      availability_zone: us-east-1a\n"),
            },
            Entry {
                name: "${NAME[\"KEY\"].ATTRIBUTE}",
                what: "One instance of a `for_each` resource (or component use).",
                example: stack!("resources:\n  vpc:\n    kind: aws.vpc\n    for_each: { blue: 10.0.0.0/16, green: 10.1.0.0/16 }\n    properties: { cidr_block: \"${each.value}\" }\noutputs:\n  blue:\n    value: ${vpc[\"blue\"].id}\n"),
            },
            Entry {
                name: "${NAME[*].ATTRIBUTE}",
                what: "The splat: the list of that attribute over every instance of a `for_each` resource (or output of a `for_each` component use), in key order.",
                example: stack!("resources:\n  vpc:\n    kind: aws.vpc\n    for_each: { a: 10.0.0.0/16, b: 10.1.0.0/16 }\n    properties: { cidr_block: \"${each.value}\" }\noutputs:\n  ids:\n    value: ${vpc[*].id}\n"),
            },
            Entry {
                name: "${each.key} / ${each.value}",
                what: "Inside a `for_each`: the key (a mapping's key, or a list element) and the value (the mapping's value, or the list element).",
                example: stack!("resources:\n  vpc:\n    kind: aws.vpc\n    for_each: { a: 10.0.0.0/16 }\n    properties:\n      cidr_block: ${each.value}\n      tags: { Zone: \"${each.key}\" }\n"),
            },
            Entry {
                name: "${stack.name} / ${stack.environment}",
                what: "The stack's name and the environment being run.",
                example: stack!("resources:\n  vpc:\n    kind: aws.vpc\n    properties:\n      cidr_block: 10.0.0.0/16\n      tags: { Name: \"${stack.name}-${stack.environment}\" }\n"),
            },
            Entry {
                name: "${input.NAME}",
                what: "In a component file: one of its inputs, as the use gives it.",
                example: concat!(
                    "name: example\ncloud:\n  aws: { region: us-east-1 }\ncomponents:\n  net:\n    source: components/net.yaml\n    inputs: { cidr: 10.0.0.0/16 }\n",
                    "# file: components/net.yaml\ninputs:\n  cidr: { type: string }\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: \"${input.cidr}\" }\n"
                ),
            },
            Entry {
                name: "${USE.OUTPUT}",
                what: "An output of a component use (`${USE[\"KEY\"].OUTPUT}` and `${USE[*].OUTPUT}` with `for_each`).",
                example: concat!(
                    "name: example\ncloud:\n  aws: { region: us-east-1 }\ncomponents:\n  net:\n    source: components/net.yaml\nresources:\n  subnet:\n    kind: aws.subnet\n    properties:\n      vpc_id: ${net.vpc_id}\n      cidr_block: 10.0.1.0/24\n      availability_zone: us-east-1a\n",
                    "# file: components/net.yaml\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: 10.0.0.0/16 }\noutputs:\n  vpc_id: ${vpc.id}\n"
                ),
            },
            Entry {
                name: "text ${...} text",
                what: "A template: the parts are joined into a string (numbers and booleans as written).",
                example: stack!("variables:\n  net: { type: number, default: 10 }\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: \"${var.net}.0.0.0/16\" }\n"),
            },
            Entry {
                name: "FUNCTION(ARGS)",
                what: "A call of one of the functions below; arguments are literals (\"text\", 8, true), references or other calls.",
                example: stack!("resources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: \"${cidrsubnet(\\\"10.0.0.0/8\\\", 8, 1)}\" }\n"),
            },
            Entry {
                name: "$${",
                what: "A literal `${` (for text that is not an expression, such as a shell snippet).",
                example: stack!("resources:\n  vpc:\n    kind: aws.vpc\n    properties:\n      cidr_block: 10.0.0.0/16\n      tags: { Note: \"written as $${HOME} in scripts\" }\n"),
            },
        ],
    },
    Section {
        title: "Types",
        intro: "The `type` of a variable or a component input. The value given (default, --var, RALPH_DEPLOY_VAR_*) must have it.",
        entries: &[
            Entry {
                name: "string",
                what: "Text. From the command line, taken as written.",
                example: stack!("variables:\n  cidr: { type: string, default: 10.0.0.0/16 }\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: \"${var.cidr}\" }\n"),
            },
            Entry {
                name: "number",
                what: "A whole or decimal number.",
                example: stack!("variables:\n  net: { type: number, default: 10 }\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: \"${var.net}.0.0.0/16\" }\n"),
            },
            Entry {
                name: "bool",
                what: "`true` or `false`.",
                example: stack!("variables:\n  dns: { type: bool, default: true }\nresources:\n  vpc:\n    kind: aws.vpc\n    properties:\n      cidr_block: 10.0.0.0/16\n      enable_dns_hostnames: ${var.dns}\n"),
            },
            Entry {
                name: "list",
                what: "A sequence. From the command line, written as JSON or YAML: `--var 'zones=[\"a\",\"b\"]'`.",
                example: stack!("variables:\n  names: { type: list, default: [blue, green] }\nresources:\n  vpc:\n    kind: aws.vpc\n    for_each: ${var.names}\n    properties: { cidr_block: 10.0.0.0/16 }\n"),
            },
            Entry {
                name: "map",
                what: "A mapping of names to values. From the command line, JSON or YAML: `--var 'tags={\"team\":\"ops\"}'`.",
                example: stack!("variables:\n  tags: { type: map, default: { Team: ops } }\nresources:\n  vpc:\n    kind: aws.vpc\n    properties:\n      cidr_block: 10.0.0.0/16\n      tags: ${var.tags}\n"),
            },
            Entry {
                name: "any",
                what: "Component inputs only: whatever the use gives (a reference's type is known only to the kind it comes from).",
                example: concat!(
                    "name: example\ncloud:\n  aws: { region: us-east-1 }\ncomponents:\n  net:\n    source: components/net.yaml\n    inputs: { dns: true }\n",
                    "# file: components/net.yaml\ninputs:\n  dns: { type: any }\nresources:\n  vpc:\n    kind: aws.vpc\n    properties:\n      cidr_block: 10.0.0.0/16\n      enable_dns_support: ${input.dns}\n"
                ),
            },
        ],
    },
    Section {
        title: "Component files",
        intro: "A component file is YAML like a stack file, with these top-level keys; a stack (or another component, up to 8 deep) uses it under `components`. Its resources refer to each other by their short names and to inputs as `${input.NAME}`.",
        entries: &[
            Entry {
                name: "description",
                what: "Free text for people.",
                example: concat!("name: example\ncloud:\n  aws: { region: us-east-1 }\ncomponents:\n  net:\n    source: components/net.yaml\n", "# file: components/net.yaml\ndescription: one network\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: 10.0.0.0/16 }\n"),
            },
            Entry {
                name: "inputs",
                what: "What each use gives: a `type` (see Types), an optional `default` and a `description`. An input without a default must be given; an input the component does not declare is an error at the use.",
                example: concat!("name: example\ncloud:\n  aws: { region: us-east-1 }\ncomponents:\n  net:\n    source: components/net.yaml\n    inputs: { cidr: 10.2.0.0/16 }\n", "# file: components/net.yaml\ninputs:\n  cidr: { type: string, default: 10.0.0.0/16, description: the range }\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: \"${input.cidr}\" }\n"),
            },
            Entry {
                name: "resources",
                what: "Resources as in a stack file; their addresses are prefixed with the use's name (`net.vpc`).",
                example: concat!("name: example\ncloud:\n  aws: { region: us-east-1 }\ncomponents:\n  net:\n    source: components/net.yaml\n", "# file: components/net.yaml\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: 10.0.0.0/16 }\n"),
            },
            Entry {
                name: "components",
                what: "Uses of further component files, relative to this file.",
                example: concat!("name: example\ncloud:\n  aws: { region: us-east-1 }\ncomponents:\n  net:\n    source: components/net.yaml\n", "# file: components/net.yaml\ncomponents:\n  inner:\n    source: vpc.yaml\n", "# file: components/vpc.yaml\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: 10.0.0.0/16 }\n"),
            },
            Entry {
                name: "outputs",
                what: "What the using file may refer to as `${USE.OUTPUT}`: name -> value.",
                example: concat!("name: example\ncloud:\n  aws: { region: us-east-1 }\ncomponents:\n  net:\n    source: components/net.yaml\noutputs:\n  vpc:\n    value: ${net.vpc_id}\n", "# file: components/net.yaml\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: 10.0.0.0/16 }\noutputs:\n  vpc_id: ${vpc.id}\n"),
            },
        ],
    },
    Section {
        title: "Component uses",
        intro: "Each entry under a stack's (or component's) `components`.",
        entries: &[
            Entry {
                name: "source",
                what: "The component file, relative to the file that uses it. Required.",
                example: concat!("name: example\ncloud:\n  aws: { region: us-east-1 }\ncomponents:\n  net:\n    source: components/net.yaml\n", "# file: components/net.yaml\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: 10.0.0.0/16 }\n"),
            },
            Entry {
                name: "inputs",
                what: "Values for the component's inputs: literals or expressions of the using file.",
                example: concat!("name: example\ncloud:\n  aws: { region: us-east-1 }\nvariables:\n  cidr: { type: string, default: 10.0.0.0/16 }\ncomponents:\n  net:\n    source: components/net.yaml\n    inputs: { cidr: \"${var.cidr}\" }\n", "# file: components/net.yaml\ninputs:\n  cidr: { type: string }\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: \"${input.cidr}\" }\n"),
            },
            Entry {
                name: "for_each",
                what: "One use per element or key, as for resources: addresses `NAME[\"KEY\"].RESOURCE`, `${each.key}` and `${each.value}` in the inputs.",
                example: concat!("name: example\ncloud:\n  aws: { region: us-east-1 }\ncomponents:\n  net:\n    source: components/net.yaml\n    for_each: { blue: 10.0.0.0/16, green: 10.1.0.0/16 }\n    inputs: { cidr: \"${each.value}\" }\n", "# file: components/net.yaml\ninputs:\n  cidr: { type: string }\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: \"${input.cidr}\" }\n"),
            },
            Entry {
                name: "depends_on",
                what: "Addresses every resource of the use waits for.",
                example: concat!("name: example\ncloud:\n  aws: { region: us-east-1 }\nresources:\n  first:\n    kind: aws.vpc\n    properties: { cidr_block: 10.9.0.0/16 }\ncomponents:\n  net:\n    source: components/net.yaml\n    depends_on: [first]\n", "# file: components/net.yaml\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: 10.0.0.0/16 }\n"),
            },
            Entry {
                name: "description",
                what: "Free text for people.",
                example: concat!("name: example\ncloud:\n  aws: { region: us-east-1 }\ncomponents:\n  net:\n    source: components/net.yaml\n    description: the main network\n", "# file: components/net.yaml\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: 10.0.0.0/16 }\n"),
            },
        ],
    },
];

/// What each function gives.
pub fn function_what(name: &str) -> &'static str {
    match name {
        "cidrsubnet" => "The `netnum`th subnet of `prefix` with `newbits` more bits: cidrsubnet(\"10.0.0.0/16\", 8, 2) is 10.0.2.0/24.",
        "cidrhost" => "The `hostnum`th address of `prefix`: cidrhost(\"10.0.0.0/16\", 1) is 10.0.0.1.",
        "join" => "The list's elements as text, `separator` between them.",
        "lookup" => "The value under `key`, or `default` when there is none (without a default, a missing key is an error).",
        "format" => "`spec` with each %s (text) and %d (whole number) replaced by the next value; %% is a percent sign.",
        "length" => "How many elements, keys or characters.",
        "concat" => "The lists one after another.",
        "upper" => "The text in upper case.",
        "lower" => "The text in lower case.",
        "keys" => "The mapping's keys, sorted.",
        "values" => "The mapping's values, in the order of its sorted keys.",
        _ => "",
    }
}

/// Each function's example: a whole stack using it.
pub fn function_example(name: &str) -> &'static str {
    match name {
        "cidrsubnet" => stack!("resources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: \"${cidrsubnet(\\\"10.0.0.0/8\\\", 8, 2)}\" }\n"),
        "cidrhost" => stack!("resources:\n  vpc:\n    kind: aws.vpc\n    properties:\n      cidr_block: 10.0.0.0/16\n      tags: { Gateway: \"${cidrhost(\\\"10.0.0.0/16\\\", 1)}\" }\n"),
        "join" => stack!("variables:\n  teams: { type: list, default: [ops, data] }\nresources:\n  vpc:\n    kind: aws.vpc\n    properties:\n      cidr_block: 10.0.0.0/16\n      tags: { Teams: \"${join(\\\",\\\", var.teams)}\" }\n"),
        "lookup" => stack!("variables:\n  ranges: { type: map, default: { production: 10.0.0.0/16 } }\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: \"${lookup(var.ranges, stack.environment, \\\"10.9.0.0/16\\\")}\" }\n"),
        "format" => stack!("variables:\n  net: { type: number, default: 10 }\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: { cidr_block: \"${format(\\\"%d.0.0.0/16\\\", var.net)}\" }\n"),
        "length" => stack!("variables:\n  zones: { type: list, default: [a, b, c] }\nresources:\n  vpc:\n    kind: aws.vpc\n    properties:\n      cidr_block: 10.0.0.0/16\n      tags: { Zones: \"${length(var.zones)} zones\" }\n"),
        "concat" => stack!("variables:\n  a: { type: list, default: [blue] }\n  b: { type: list, default: [green] }\nresources:\n  vpc:\n    kind: aws.vpc\n    for_each: ${concat(var.a, var.b)}\n    properties: { cidr_block: 10.0.0.0/16 }\n"),
        "upper" => stack!("resources:\n  vpc:\n    kind: aws.vpc\n    properties:\n      cidr_block: 10.0.0.0/16\n      tags: { Env: \"${upper(stack.environment)}\" }\n"),
        "lower" => stack!("variables:\n  team: { type: string, default: OPS }\nresources:\n  vpc:\n    kind: aws.vpc\n    properties:\n      cidr_block: 10.0.0.0/16\n      tags: { Team: \"${lower(var.team)}\" }\n"),
        "keys" => stack!("variables:\n  nets: { type: map, default: { blue: 1, green: 2 } }\nresources:\n  vpc:\n    kind: aws.vpc\n    for_each: ${keys(var.nets)}\n    properties: { cidr_block: 10.0.0.0/16 }\n"),
        "values" => stack!("variables:\n  owners: { type: map, default: { network: ops, data: dba } }\nresources:\n  vpc:\n    kind: aws.vpc\n    properties:\n      cidr_block: 10.0.0.0/16\n      tags: { Owners: \"${join(\\\" \\\", values(var.owners))}\" }\n"),
        _ => "",
    }
}

/// The first stack of the page: written from this page alone, it validates,
/// plans and applies (a test runs exactly the commands shown).
pub const FIRST_STACK: &str = "name: first
cloud:
  aws: { region: us-east-1 }
variables:
  cidr: { type: string, default: 10.20.0.0/16 }
resources:
  vpc:
    kind: aws.vpc
    properties: { cidr_block: \"${var.cidr}\" }
  subnet:
    kind: aws.subnet
    for_each: { a: 1, b: 2 }
    properties:
      vpc_id: ${vpc.id}
      cidr_block: ${cidrsubnet(var.cidr, 8, each.value)}
      availability_zone: us-east-1${each.key}
outputs:
  subnets:
    value: ${subnet[*].id}
";

/// The commands of the first stack, in order.
pub const FIRST_COMMANDS: &[&str] = &[
    "ralph-deploy validate first.yaml",
    "ralph-deploy plan first.yaml",
    "ralph-deploy apply first.yaml --auto-approve",
    "ralph-deploy output first.yaml",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn names(title: &str) -> Vec<&'static str> {
        SECTIONS
            .iter()
            .find(|s| s.title == title)
            .unwrap()
            .entries
            .iter()
            .map(|e| e.name)
            .collect()
    }

    fn same(mut a: Vec<&str>, b: &[&str]) {
        let mut b = b.to_vec();
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }

    #[test]
    fn every_key_and_type_the_loader_accepts_is_documented() {
        use super::super::load::*;
        same(names("Top-level keys"), TOP_KEYS);
        same(names("Resource keys"), RESOURCE_KEYS);
        same(names("Environment keys"), ENV_KEYS);
        same(names("Component files"), COMPONENT_KEYS);
        same(names("Component uses"), USE_KEYS);
        same(names("Types"), INPUT_TYPES);
        for t in VARIABLE_TYPES {
            assert!(INPUT_TYPES.contains(t));
        }
        for f in super::super::functions::NAMES {
            assert!(
                !function_example(f).is_empty(),
                "function {f} has no example"
            );
            assert!(
                !function_what(f).is_empty(),
                "function {f} is not described"
            );
        }
    }
}
