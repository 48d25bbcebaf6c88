"""The static files of the exported Ansible role and playbook.

Nothing here depends on a profile: every profile-derived value (name, hash, wheel name and
sha256) goes into roles/synapse/vars/main.yml through yaml.safe_dump (export.py), is checked
against a strict pattern first, and reaches the host only as module arguments, never as
template text. The profile itself is copied as a file (`copy: src=`, not `template`).
"""

from __future__ import annotations

ROLE = "synapse"

# defaults/main.yml: what group_vars / host_vars override (dumped with yaml.safe_dump)
DEFAULTS: dict[str, object] = {
    "synapse_root": "/",
    "synapse_python": "/usr/bin/python3",
    "synapse_venv": "/opt/synapse-fleet/venv",
    "synapse_venv_system_site_packages": False,
    "synapse_remote_dir": "/var/lib/synapse-fleet",
    "synapse_pip_extra_args": "",
    "synapse_allow_reboot": False,
    "synapse_reboot_timeout": 1800,
    # this host's hardware section over the profile's: a mapping of hardware keys
    # (cores, ram, ...), or "detected" for what `synapse init --json` reads on the host
    "synapse_hardware": {},
    "synapse_rollback_on_failure": False,
    "synapse_rollback_force": True,
    "synapse_bench": False,
    "synapse_bench_args": ["-r", "5", "--max-repetitions", "10"],
    "synapse_results_dir": "{{ playbook_dir }}/results",
}

TASKS_MAIN = """\
---
- name: Check the Synapse role variables
  ansible.builtin.assert:
    that:
      - synapse_root is string
      - synapse_root is match('^/')
      - synapse_remote_dir is match('^/')
      - synapse_venv is match('^/')
      - synapse_bench_args is sequence
      - synapse_bench_args is not string
      - synapse_hardware is mapping or synapse_hardware == 'detected'
    fail_msg: >-
      synapse_root, synapse_remote_dir and synapse_venv must be absolute paths,
      synapse_bench_args a list and synapse_hardware a mapping of hardware keys or
      'detected'; fix them in group_vars or host_vars
    quiet: true
  tags: [always]

- name: Install Synapse on the host
  ansible.builtin.import_tasks: install.yml

- name: Write this host's profile
  ansible.builtin.import_tasks: host_profile.yml

- name: Apply the profile
  tags: [synapse_apply]
  block:
    - name: Apply the profile with synapse apply
      synapse_apply:
        synapse: "{{ synapse_venv }}/bin/synapse"
        profile: "{{ synapse_remote_dir }}/host-profile.yaml"
        exported_profile: "{{ synapse_remote_dir }}/profile.yaml"
        root: "{{ synapse_root }}"
        profile_hash: "{{ synapse_profile_hash }}"
      register: synapse_apply_result
      notify: Reboot for Synapse
      tags: [synapse_apply]

    - name: Say that a reboot is needed but not allowed
      ansible.builtin.debug:
        msg: >-
          reboot needed ({{ synapse_apply_result.reboot_reasons | join('; ') }}) but
          {{ 'the target is not the running system' if synapse_root != '/'
             else 'synapse_allow_reboot is false' }}: not rebooting
      when:
        - synapse_apply_result.reboot_reasons | default([]) | length > 0
        - not (synapse_allow_reboot | bool) or synapse_root != '/'
      tags: [synapse_apply]
  rescue:
    - name: Roll back after a failed apply
      ansible.builtin.include_tasks: rollback.yml
      tags: [synapse_apply]

- name: Reboot now if apply asked for it and the play allows it
  ansible.builtin.meta: flush_handlers
  tags: [synapse_apply]

- name: Verify the profile
  when: not ansible_check_mode
  tags: [synapse_verify]
  block:
    - name: Verify the host with synapse verify
      synapse_verify:
        synapse: "{{ synapse_venv }}/bin/synapse"
        profile: "{{ synapse_remote_dir }}/host-profile.yaml"
        root: "{{ synapse_root }}"
        output: "{{ synapse_remote_dir }}/results/verify.json"
      register: synapse_verify_result
      tags: [synapse_verify]

    - name: Fetch the verify report to the controller
      ansible.builtin.fetch:
        src: "{{ synapse_remote_dir }}/results/verify.json"
        dest: "{{ synapse_results_dir }}/{{ inventory_hostname }}/verify.json"
        flat: true
      changed_when: false
      tags: [synapse_verify]

    - name: Fail the host on any failing check
      ansible.builtin.assert:
        that: synapse_verify_result.failed_checks | length == 0
        fail_msg: "{{ synapse_verify_result.msg }}"
        success_msg: "{{ synapse_verify_result.msg }}"
      tags: [synapse_verify]
  rescue:
    - name: Roll back after a failed verify
      ansible.builtin.include_tasks: rollback.yml
      tags: [synapse_verify]

- name: Benchmark the host
  ansible.builtin.import_tasks: bench.yml
  when: synapse_bench | bool
"""

TASKS_INSTALL = """\
---
# Runs in check mode too (check_mode: false): the plan is computed by synapse on the host,
# so --check installs the tool into its own venv; it never touches synapse_root. Few module
# calls: one directory, one payload copy, one install command, one host-profile command.
- name: Create the Synapse directory
  ansible.builtin.file:
    path: "{{ synapse_remote_dir }}/results"
    state: directory
    mode: "0755"
  check_mode: false
  tags: [synapse_install, synapse_apply, synapse_verify, synapse_bench]

- name: Copy the payload (profile, requirements, wheel, installer)
  ansible.builtin.copy:
    src: synapse-payload.tar
    dest: "{{ synapse_remote_dir }}/synapse-payload.tar"
    mode: "0644"
  check_mode: false
  tags: [synapse_install, synapse_apply, synapse_verify, synapse_bench]

# tar unpacks it, install-synapse.sh makes the venv, installs the requirements and the
# wheel (checked against its exported sha256) unless the venv already has exactly these
- name: Install Synapse on the host
  ansible.builtin.command:
    argv: "{{ ['sh', '-euc',
               'cd \\"$1\\"; tar -xf synapse-payload.tar; exec sh install-synapse.sh \\"$@\\"',
              'install-synapse', synapse_remote_dir, synapse_python, synapse_venv,
              synapse_venv_system_site_packages | bool | string | lower,
              'requirements-bench.txt' if synapse_bench | bool else 'requirements.txt',
              synapse_wheel, synapse_wheel_sha256]
              + (synapse_pip_extra_args | split if synapse_pip_extra_args else []) }}"
  register: synapse_install_result
  changed_when: "'changed: ' in synapse_install_result.stdout"
  check_mode: false
  tags: [synapse_install, synapse_apply, synapse_verify, synapse_bench]
"""

TASKS_HOST_PROFILE = """\
---
# The exported profile with this host's hardware section laid over it (`extends:`): synapse
# validates every key, and refuses to apply a profile the running machine contradicts.
- name: Write this host's profile with synapse fleet host-profile
  ansible.builtin.command:
    argv: "{{ [synapse_venv ~ '/bin/synapse', 'fleet', 'host-profile',
              synapse_remote_dir ~ '/profile.yaml',
              '-o', synapse_remote_dir ~ '/host-profile.yaml', '--json']
              + (['--detect'] if synapse_hardware == 'detected'
                 else ['--hardware', synapse_hardware | to_json]) }}"
  register: synapse_host_profile
  changed_when: (synapse_host_profile.stdout | from_json).changed
  check_mode: false
  tags: [synapse_install, synapse_apply, synapse_verify]
"""

TASKS_ROLLBACK = """\
---
- name: Roll back this host's transaction with synapse rollback
  ansible.builtin.command:
    argv: "{{ [synapse_venv ~ '/bin/synapse', 'rollback']
              + ([synapse_apply_result.transaction]
                 if (synapse_apply_result.transaction | default(none)) else [])
              + ['--root', synapse_root, '--yes', '--json']
              + (['--force'] if synapse_rollback_force | bool else []) }}"
  register: synapse_rollback_result
  changed_when: true
  when: synapse_rollback_on_failure | bool and not ansible_check_mode
  tags: [always]

- name: Fail the host
  ansible.builtin.fail:
    msg: >-
      {{ ansible_failed_result.msg | default('synapse failed') }}{{
         '; rolled back with synapse rollback'
         if synapse_rollback_result is changed
         else '; not rolled back (set synapse_rollback_on_failure: true to do so)' }}
  tags: [always]
"""

TASKS_BENCH = """\
---
- name: Run synapse bench run
  ansible.builtin.command:
    argv: "{{ [synapse_venv ~ '/bin/synapse', 'bench', 'run', '--label', inventory_hostname,
              '-o', synapse_remote_dir ~ '/results/bench.jsonl'] + synapse_bench_args }}"
  changed_when: false
  when: not ansible_check_mode
  tags: [synapse_bench]

- name: Fetch the bench records to the controller
  ansible.builtin.fetch:
    src: "{{ synapse_remote_dir }}/results/bench.jsonl"
    dest: "{{ synapse_results_dir }}/{{ inventory_hostname }}/bench.jsonl"
    flat: true
  changed_when: false
  when: not ansible_check_mode
  tags: [synapse_bench]
"""

HANDLERS = """\
---
- name: Reboot for Synapse
  ansible.builtin.reboot:
    msg: "synapse apply: {{ synapse_apply_result.reboot_reasons | join('; ') }}"
    reboot_timeout: "{{ synapse_reboot_timeout | int }}"
  when:
    - synapse_allow_reboot | bool
    - synapse_root == '/'
    - synapse_apply_result.reboot_reasons | default([]) | length > 0
"""

META = {
    "galaxy_info": {
        "author": "Synapse",
        "role_name": "synapse",
        "namespace": "synapse_os",
        "description": "Apply, verify and benchmark one Synapse profile on every host",
        "license": "MIT",
        "min_ansible_version": "2.15",
        "platforms": [{"name": "Debian", "versions": ["bookworm"]},
                      {"name": "ArchLinux", "versions": ["all"]}],
        "galaxy_tags": ["tuning", "llm", "inference"],
    },
    "dependencies": [],
}

SITE = """\
---
# Written by `synapse fleet export`. Rolling: one host per batch (-e synapse_serial=N for
# wider batches), and the rollout stops at the first failed host (max_fail_percentage: 0).
- name: Check the inventory
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Refuse an inventory without synapse hosts
      ansible.builtin.assert:
        that: groups['synapse'] | default([]) | length > 0
        fail_msg: >-
          no hosts in group 'synapse': pass -i INVENTORY naming an existing inventory with a
          [synapse] group (see inventory.example.ini)
        quiet: true
      tags: [always]

- name: Tune the fleet with Synapse
  hosts: synapse
  serial: "{{ synapse_serial | default(1) }}"
  max_fail_percentage: 0
  gather_facts: false
  become: true
  roles:
    - role: synapse
"""

INVENTORY = """\
# Example inventory (ansible-playbook -i inventory.example.ini site.yml).
# Per-host settings go in host_vars/NAME.yml, shared ones in group_vars/synapse.yml.
[synapse]
box1.example.org
box2.example.org
"""

GROUP_VARS = """\
---
# Settings for every host in group 'synapse' (see roles/synapse/defaults/main.yml).
synapse_root: /
synapse_allow_reboot: false
synapse_rollback_on_failure: false
synapse_bench: false
"""
