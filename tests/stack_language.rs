//! Components, for_each, functions and moved, through the binary's
//! `validate` and `graph` (no cloud is contacted): addresses, references
//! across component boundaries, and errors that point into component files
//! and name the use that brought them in.

use crate::common;

use std::path::Path;

use common::{text, BIN};
use serde_json::Value;

struct Files(tempfile::TempDir);

impl Files {
    fn new(files: &[(&str, &str)]) -> Files {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in files {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        }
        Files(dir)
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(BIN)
            .current_dir(self.0.path())
            .args(args)
            .env("RALPH_DEPLOY_STATE_DIR", self.0.path().join("state"))
            .output()
            .unwrap()
    }

    /// The graph's nodes: address -> dependencies.
    fn graph(&self) -> Vec<(String, Vec<String>)> {
        let out = self.run(&["graph", "stacks/s.yaml", "--format", "json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["address"].as_str().unwrap().to_string(),
                    n["depends_on"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|d| d.as_str().unwrap().to_string())
                        .collect(),
                )
            })
            .collect()
    }

    /// The problems `validate --json` reports.
    fn problems(&self) -> Vec<Value> {
        let out = self.run(&["validate", "stacks/s.yaml", "--json"]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["problems"].as_array().unwrap().clone()
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

const SUBNETS: &str = r#"description: subnets of one tier
inputs:
  vpc_id: { type: string }
  tier: { type: string, default: private }
  zones: { type: map, description: "zone -> netnum" }
resources:
  subnet:
    kind: aws.subnet
    for_each: ${input.zones}
    properties:
      vpc_id: ${input.vpc_id}
      cidr_block: ${cidrsubnet("10.0.0.0/16", 8, each.value)}
      availability_zone: us-east-1${each.key}
      tags: { tier: "${input.tier}" }
outputs:
  ids: ${subnet[*].id}
  first: ${subnet["a"].id}
"#;

fn stack(body: &str) -> String {
    format!("name: s\ncloud: {{ aws: {{ region: us-east-1 }} }}\n{body}")
}

#[test]
fn a_component_used_twice_gets_distinct_addresses_and_its_outputs_cross_the_boundary() {
    let f = Files::new(&[
        ("components/subnets.yaml", SUBNETS),
        (
            "stacks/s.yaml",
            &stack(
                r#"resources:
  vpc: { kind: aws.vpc, properties: { cidr_block: 10.0.0.0/16 } }
  rds:
    kind: aws.rds_subnet_group
    properties: { name: s-db, subnet_ids: "${private.ids}" }
components:
  public:
    source: ../components/subnets.yaml
    inputs: { vpc_id: "${vpc.id}", tier: public, zones: { a: 0, b: 1 } }
  private:
    source: ../components/subnets.yaml
    inputs: { vpc_id: "${vpc.id}", zones: { a: 10, b: 11, c: 12 } }
outputs:
  public_first: ${public.first}
"#,
            ),
        ),
    ]);
    let g = f.graph();
    let addresses: Vec<&str> = g.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        addresses,
        vec![
            "private.subnet[\"a\"]",
            "private.subnet[\"b\"]",
            "private.subnet[\"c\"]",
            "public.subnet[\"a\"]",
            "public.subnet[\"b\"]",
            "rds",
            "vpc"
        ]
    );
    // The splat output of the component is every instance: rds depends on all three.
    let rds = &g.iter().find(|(a, _)| a == "rds").unwrap().1;
    assert_eq!(
        rds,
        &vec![
            "private.subnet[\"a\"]".to_string(),
            "private.subnet[\"b\"]".into(),
            "private.subnet[\"c\"]".into()
        ]
    );
    let out = f.run(&["validate", "stacks/s.yaml", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["resources"], 7);
}

#[test]
fn components_nest_and_for_each_works_on_component_uses_and_over_lists() {
    let f = Files::new(&[
        ("components/subnets.yaml", SUBNETS),
        (
            "components/network.yaml",
            r#"inputs:
  cidr: { type: string }
resources:
  vpc: { kind: aws.vpc, properties: { cidr_block: "${input.cidr}" } }
  eip:
    kind: aws.eip
    for_each: [x, y]
components:
  tier:
    source: subnets.yaml
    inputs: { vpc_id: "${vpc.id}", zones: { a: 1 } }
outputs:
  subnet: ${tier.first}
"#,
        ),
        (
            "stacks/s.yaml",
            &stack(
                r#"variables:
  envs: { type: list, default: [blue, green] }
resources:
  igw: { kind: aws.eip }
components:
  net:
    source: ../components/network.yaml
    for_each: ${var.envs}
    inputs: { cidr: 10.0.0.0/16 }
outputs:
  subnets: ${net[*].subnet}
  green: ${net["green"].subnet}
"#,
            ),
        ),
    ]);
    let g = f.graph();
    let addresses: Vec<&str> = g.iter().map(|(a, _)| a.as_str()).collect();
    for a in [
        "net[\"blue\"].vpc",
        "net[\"green\"].eip[\"x\"]",
        "net[\"green\"].eip[\"y\"]",
        "net[\"green\"].tier.subnet[\"a\"]",
        "net[\"blue\"].tier.subnet[\"a\"]",
    ] {
        assert!(addresses.contains(&a), "{a} not in {addresses:?}");
    }
    let sub = &g
        .iter()
        .find(|(a, _)| a == "net[\"blue\"].tier.subnet[\"a\"]")
        .unwrap()
        .1;
    assert_eq!(sub, &vec!["net[\"blue\"].vpc".to_string()]);
}

#[test]
fn inputs_are_checked_at_the_use_site() {
    let f = Files::new(&[
        ("components/subnets.yaml", SUBNETS),
        (
            "stacks/s.yaml",
            &stack(
                r#"resources:
  vpc: { kind: aws.vpc, properties: { cidr_block: 10.0.0.0/16 } }
components:
  private:
    source: ../components/subnets.yaml
    inputs:
      vpc_id: "${vpc.id}"
      zones: [a, b]
      tierr: x
"#,
            ),
        ),
    ]);
    let p = f.problems();
    let find = |needle: &str| {
        p.iter()
            .find(|x| x["message"].as_str().unwrap().contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in {p:?}"))
            .clone()
    };
    let wrong = find("input `zones` of component `private` must be map, found a list");
    assert_eq!(
        (wrong["file"].as_str(), wrong["line"].as_u64()),
        (Some("stacks/s.yaml"), Some(10))
    );
    let unknown = find("component `private` has no input `tierr`");
    assert_eq!(unknown["line"], 11);
    assert_eq!(unknown["help"], "did you mean `tier`?");
}

#[test]
fn a_problem_inside_a_component_names_its_file_line_and_the_use() {
    let broken = SUBNETS.replace("availability_zone:", "availability_zon:");
    let f = Files::new(&[
        ("components/subnets.yaml", &broken),
        (
            "stacks/s.yaml",
            &stack(
                r#"resources:
  vpc: { kind: aws.vpc, properties: { cidr_block: 10.0.0.0/16 } }
components:
  private:
    source: ../components/subnets.yaml
    inputs: { vpc_id: "${vpc.id}", zones: { a: 1 } }
"#,
            ),
        ),
    ]);
    let p = f.problems();
    let unknown = p
        .iter()
        .find(|x| {
            x["message"]
                .as_str()
                .unwrap()
                .contains("unknown property `availability_zon`")
        })
        .unwrap_or_else(|| panic!("{p:?}"));
    assert_eq!(unknown["file"], "components/subnets.yaml");
    assert_eq!(unknown["line"], 13);
    // Every problem of the component names the use that brought it in.
    for x in &p {
        assert_eq!(x["via"], "component `private` used at stacks/s.yaml:7:13");
    }
    // The text form says the same.
    let out = f.run(&["validate", "stacks/s.yaml"]);
    let err = text(&out.stderr);
    assert!(
        err.contains("components/subnets.yaml:13:7: unknown property `availability_zon`")
            && err.contains("(in component `private` used at stacks/s.yaml:7:13)"),
        "{err}"
    );
    assert!(f.path().join("stacks/s.yaml").exists());
}

#[test]
fn a_cycle_through_a_component_is_reported_with_its_addresses() {
    let f = Files::new(&[
        (
            "components/c.yaml",
            r#"inputs:
  vpc: { type: string }
resources:
  sg:
    kind: aws.security_group
    properties: { name: inner, vpc_id: "${input.vpc}" }
outputs:
  sg: ${sg.id}
"#,
        ),
        (
            "stacks/s.yaml",
            &stack(
                r#"resources:
  vpc:
    kind: aws.vpc
    properties: { cidr_block: 10.0.0.0/16, tags: { sg: "${inner.sg}" } }
components:
  inner:
    source: ../components/c.yaml
    inputs: { vpc: "${vpc.id}" }
"#,
            ),
        ),
    ]);
    let p = f.problems();
    let m = p
        .iter()
        .map(|x| x["message"].as_str().unwrap().to_string())
        .find(|m| m.contains("dependency cycle"))
        .unwrap_or_else(|| panic!("{p:?}"));
    assert!(m.contains("inner.sg") && m.contains("vpc"), "{m}");
}

#[test]
fn moved_and_for_each_mistakes_are_validation_errors() {
    let f = Files::new(&[(
        "stacks/s.yaml",
        &stack(
            r#"variables:
  zones: { type: list, default: [a, b] }
resources:
  vpc: { kind: aws.vpc, properties: { cidr_block: 10.0.0.0/16 } }
  private:
    kind: aws.subnet
    for_each: ${var.zones}
    properties: { vpc_id: "${vpc.id}", cidr_block: "${cidrsubnet(\"10.0.0.0/16\", 8, 1)}", availability_zone: "us-east-1${each.key}" }
moved:
  - { from: old_vpc, to: vcp }
  - { from: vpc, to: 'private["a"]' }
"#,
        ),
    )]);
    let p = f.problems();
    let messages: Vec<String> = p
        .iter()
        .map(|x| {
            format!(
                "{}:{} {}",
                x["line"],
                x["column"],
                x["message"].as_str().unwrap()
            )
        })
        .collect();
    let has = |needle: &str| {
        assert!(
            messages.iter().any(|m| m.contains(needle)),
            "no `{needle}` in {messages:#?}"
        )
    };
    has("12:26 `moved` leads to `vcp`, which matches nothing in the stack");
    has("13:13 `moved` renames `vpc`, which the stack still declares");
}

#[test]
fn a_for_each_resource_is_referred_to_by_instance_or_splat() {
    let f = Files::new(&[(
        "stacks/s.yaml",
        &stack(
            r#"resources:
  vpc: { kind: aws.vpc, properties: { cidr_block: 10.0.0.0/16 } }
  private:
    kind: aws.subnet
    for_each: [a, b]
    properties: { vpc_id: "${vpc.id}", cidr_block: 10.0.1.0/24, availability_zone: "us-east-1${each.key}" }
  rt:
    kind: aws.route_table
    properties: { vpc_id: "${private.id}" }
  rt2:
    kind: aws.route_table
    properties: { vpc_id: '${private["d"].id}' }
"#,
        ),
    )]);
    let p = f.problems();
    let messages: Vec<String> = p
        .iter()
        .map(|x| {
            format!(
                "{}:{} {}",
                x["line"],
                x["column"],
                x["message"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        messages.iter().any(|m| m.starts_with("11:27")
            && m.contains("`private` has `for_each`: name one instance or all of them")),
        "{messages:#?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("`private` has no instance `d`")),
        "{messages:#?}"
    );
}
