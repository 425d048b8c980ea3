"""Generates a stack of N resources for the benchmarks: VPCs (one per 250
resources), and in each a mix of subnets, security groups with rules,
route tables and secrets.

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
    i = 0
    while count < n:
        v = i % vpcs
        slot = i // vpcs
        kind = i % 10
        if kind < 4 and slot < 250:
            out += [f"  subnet{i}:", "    kind: aws.subnet", "    properties:", f"      vpc_id: ${{vpc{v}.id}}",
                    f"      cidr_block: 10.{v % 256}.{slot % 256}.0/24", f"      availability_zone: us-east-1{'abc'[i % 3]}"]
        elif kind < 6 or (kind < 4):
            out += [f"  sg{i}:", "    kind: aws.security_group", "    properties:", f"      name: rules-{i}",
                    f"      vpc_id: ${{vpc{v}.id}}", "      ingress:",
                    "        - { protocol: tcp, from_port: 443, cidr_block: 10.0.0.0/8 }",
                    "        - { protocol: tcp, from_port: 8080, cidr_block: 10.0.0.0/8 }"]
        elif kind < 8:
            out += [f"  rt{i}:", "    kind: aws.route_table", "    properties:", f"      vpc_id: ${{vpc{v}.id}}"]
        else:
            out += [f"  secret{i}:", "    kind: aws.secret", "    properties:", f"      name: {name}/secret-{i}",
                    "      generate: { bytes: 16, encoding: hex }", "      recovery_window_days: 0"]
        count += 1
        i += 1
    print("\n".join(out))


if __name__ == "__main__":
    main()
