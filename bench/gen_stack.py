"""Generates a stack of N resources for the benchmarks: VPCs (one per 250
resources), and in each a mix of subnets, security groups with rules,
route tables and secrets, each mix written as `for_each` resources (one
declaration per VPC and kind, one instance per key).

    python3 bench/gen_stack.py N NAME > stack.yaml
"""
import sys


def main():
    n = int(sys.argv[1])
    name = sys.argv[2] if len(sys.argv) > 2 else f"bench-{n}"
    out = [f"name: {name}", "resources:"]
    count = 0
    vpcs = max(1, (n + 249) // 250)
    for v in range(vpcs):
        out += [f"  vpc{v}:", "    kind: aws.vpc", "    properties:", f"      cidr_block: 10.{v % 256}.0.0/16"]
        count += 1
    # (vpc, kind) -> [(key, slot)]
    groups = {}
    i = 0
    while count < n:
        v = i % vpcs
        slot = i // vpcs
        kind = i % 10
        if kind < 4 and slot < 250:
            k = "subnet"
        elif kind < 6 or (kind < 4):
            k = "sg"
        elif kind < 8:
            k = "rt"
        else:
            k = "secret"
        groups.setdefault((v, k), []).append((f"n{i}", slot))
        count += 1
        i += 1
    for (v, k), items in sorted(groups.items()):
        keys = ", ".join(key for key, _ in items)
        if k == "subnet":
            slots = ", ".join(f"{key}: {slot % 256}" for key, slot in items)
            out += [f"  subnet_v{v}:", "    kind: aws.subnet", f"    for_each: {{ {slots} }}", "    properties:",
                    f"      vpc_id: ${{vpc{v}.id}}",
                    f"      cidr_block: ${{cidrsubnet(\"10.{v % 256}.0.0/16\", 8, each.value)}}",
                    "      availability_zone: us-east-1a"]
        elif k == "sg":
            out += [f"  sg_v{v}:", "    kind: aws.security_group", f"    for_each: [{keys}]", "    properties:",
                    "      name: rules-${each.key}",
                    f"      vpc_id: ${{vpc{v}.id}}", "      ingress:",
                    "        - { protocol: tcp, from_port: 443, cidr_block: 10.0.0.0/8 }",
                    "        - { protocol: tcp, from_port: 8080, cidr_block: 10.0.0.0/8 }"]
        elif k == "rt":
            out += [f"  rt_v{v}:", "    kind: aws.route_table", f"    for_each: [{keys}]", "    properties:",
                    f"      vpc_id: ${{vpc{v}.id}}"]
        else:
            out += [f"  secret_v{v}:", "    kind: aws.secret", f"    for_each: [{keys}]", "    properties:",
                    f"      name: {name}/secret-${{each.key}}",
                    "      generate: { bytes: 16, encoding: hex }", "      recovery_window_days: 0"]
    print("\n".join(out))


if __name__ == "__main__":
    main()
