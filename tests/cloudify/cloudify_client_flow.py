#!/usr/bin/env python
"""End-to-end check of a Cloudify REST API v3.1 server using Cloudify's own
Python REST client (cloudify-common 7.0.x).

Flow: manager status/version -> secrets -> (optional) token auth ->
blueprint upload -> deployment create -> install -> wait -> inspect nodes,
node instances, events, outputs -> node-instance update (optimistic locking)
-> uninstall -> wait -> delete deployment -> delete blueprint.

Exit code 0 on success, 1 on a failed check, 2 on an unexpected client or
connection error.

Example:
    python cloudify_client_flow.py --host 127.0.0.1 --port 8080 \
        --protocol http --user admin --password admin \
        --tenant default_tenant --blueprint-dir path/to/blueprint
"""

import argparse
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
import uuid

import requests
from cloudify_rest_client import CloudifyClient
from cloudify_rest_client.exceptions import CloudifyClientError
from cloudify_rest_client.executions import Execution

# Keys `cfy` (cloudify_cli.execution_events_fetcher) reads with [] from
# every event/log item; a server omitting any of them breaks the CLI.
EVENT_REQUIRED_KEYS = (
    'type', 'timestamp', 'reported_timestamp', 'message', 'deployment_id',
    'execution_id', 'workflow_id', 'node_name', 'node_instance_id',
    'operation', 'error_causes',
)
WORKFLOW_END_EVENT_TYPES = {
    'workflow_succeeded', 'workflow_failed', 'workflow_cancelled'}
POLL_INTERVAL = 1.0


class CheckFailed(Exception):
    pass


def check(condition, message):
    if not condition:
        raise CheckFailed(message)


def log(message):
    print('[flow] {0}'.format(message), flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--host', default='127.0.0.1')
    parser.add_argument('--port', type=int, default=8080)
    parser.add_argument('--protocol', default='http',
                        choices=['http', 'https'])
    parser.add_argument('--user', default='admin')
    parser.add_argument('--password', default='admin')
    parser.add_argument('--tenant', default='default_tenant')
    parser.add_argument('--blueprint-dir', required=True,
                        help='directory containing the main blueprint file')
    parser.add_argument('--blueprint-file', default='blueprint.yaml',
                        help='main blueprint file name inside the directory')
    parser.add_argument('--inputs', default='{}',
                        help='deployment inputs, as a JSON object')
    parser.add_argument('--upload-mode', choices=['upload', 'archive'],
                        default='upload',
                        help='"upload": blueprints.upload(<yaml path>) (the '
                             'client tars the directory); "archive": build '
                             'a tar.gz here and use publish_archive()')
    parser.add_argument('--use-token', action='store_true',
                        help='create an API token with basic auth, then run '
                             'the rest of the flow authenticated by token')
    parser.add_argument('--timeout', type=float, default=600,
                        help='seconds to wait for each workflow execution')
    parser.add_argument('--keep', action='store_true',
                        help='do not uninstall/delete at the end')
    parser.add_argument('--trust-all', action='store_true',
                        help='https: skip certificate verification')
    return parser.parse_args(argv)


def make_client(args, token=None):
    kwargs = dict(host=args.host, port=args.port, protocol=args.protocol,
                  tenant=args.tenant, trust_all=args.trust_all)
    if token:
        kwargs['token'] = token
    else:
        kwargs.update(username=args.user, password=args.password)
    return CloudifyClient(**kwargs)


def wait_for_execution(client, execution_id, timeout):
    """Poll GET /executions/<id> until the status is an end state."""
    deadline = time.time() + timeout
    while True:
        execution = client.executions.get(execution_id)
        if execution.status in Execution.END_STATES:
            return execution
        if time.time() > deadline:
            raise CheckFailed('execution {0} ({1}) did not end within {2}s; '
                              'last status: {3}'.format(
                                  execution_id, execution.workflow_id,
                                  timeout, execution.status))
        time.sleep(POLL_INTERVAL)


def wait_for_deployment_environment(client, deployment_id, timeout):
    """Wait for create_deployment_environment, if the server exposes it.

    With the default (synchronous) deployments.create the server has already
    waited; this only matters for servers that create asynchronously.
    """
    executions = client.executions.list(
        deployment_id=deployment_id, include_system_workflows=True,
        workflow_id='create_deployment_environment')
    for execution in executions:
        if execution.workflow_id != 'create_deployment_environment':
            continue
        if execution.status not in Execution.END_STATES:
            execution = wait_for_execution(client, execution.id, timeout)
        check(execution.status == Execution.TERMINATED,
              'create_deployment_environment ended as {0}: {1}'.format(
                  execution.status, execution.error))


def list_all_events(client, execution_id, page_size=100):
    """Fetch every event and log of an execution, page by page."""
    events, offset = [], 0
    while True:
        page = client.events.list(
            execution_id=execution_id, include_logs=True,
            _offset=offset, _size=page_size, sort='reported_timestamp')
        events.extend(page.items)
        total = page.metadata.pagination.total
        offset += len(page.items)
        if not page.items or offset >= total:
            return events, total


def run_workflow(client, deployment_id, workflow_id, timeout):
    log('starting {0} on {1}'.format(workflow_id, deployment_id))
    execution = client.executions.start(deployment_id, workflow_id)
    check(execution.id, 'executions.start returned no id')
    check(execution.workflow_id == workflow_id,
          'execution.workflow_id is {0!r}'.format(execution.workflow_id))
    check(execution.deployment_id == deployment_id,
          'execution.deployment_id is {0!r}'.format(execution.deployment_id))
    execution = wait_for_execution(client, execution.id, timeout)
    log('{0} ended: {1}'.format(workflow_id, execution.status))
    check(execution.status == Execution.TERMINATED,
          '{0} ended as {1}: {2}'.format(
              workflow_id, execution.status, execution.error))

    listed = client.executions.list(deployment_id=deployment_id)
    check(execution.id in [e.id for e in listed],
          'executions.list(deployment_id=...) misses {0}'.format(
              execution.id))

    events, total = list_all_events(client, execution.id)
    log('{0}: {1} events/logs (pagination total {2})'.format(
        workflow_id, len(events), total))
    check(events, 'no events for execution {0}'.format(execution.id))
    check(total == len(events),
          'pagination total {0} != fetched {1}'.format(total, len(events)))
    for event in events:
        missing = [k for k in EVENT_REQUIRED_KEYS if k not in event]
        check(not missing, 'event lacks keys {0}: {1}'.format(missing, event))
        check(event['execution_id'] == execution.id,
              'event of another execution: {0}'.format(event))
        check(event['type'] in ('cloudify_event', 'cloudify_log'),
              'bad event type: {0}'.format(event))
    end_types = [e.get('event_type') for e in events
                 if e.get('event_type') in WORKFLOW_END_EVENT_TYPES]
    check(end_types == ['workflow_succeeded'],
          'expected one workflow_succeeded event, got {0}'.format(end_types))
    return execution


def check_node_instances(client, deployment_id, expected_state):
    instances = client.node_instances.list(deployment_id=deployment_id)
    check(len(instances) > 0, 'deployment has no node instances')
    check(instances.metadata.pagination.total == len(instances),
          'node-instances pagination total mismatch')
    states = {ni.id: ni.state for ni in instances}
    log('node instances: {0}'.format(states))
    bad = {k: v for k, v in states.items() if v != expected_state}
    check(not bad, 'node instances not {0}: {1}'.format(expected_state, bad))
    for ni in instances:
        check(ni.deployment_id == deployment_id,
              'node instance {0} has deployment_id {1!r}'.format(
                  ni.id, ni.deployment_id))
        check(ni.node_id, 'node instance {0} has no node_id'.format(ni.id))
        check(isinstance(ni.version, int),
              'node instance {0} version {1!r}'.format(ni.id, ni.version))
    return instances


def check_node_instance_update(client, node_instance_id):
    """PATCH runtime properties with optimistic locking (version)."""
    ni = client.node_instances.get(node_instance_id)
    props = dict(ni.runtime_properties or {})
    props['flow_check'] = 'ok'
    updated = client.node_instances.update(
        ni.id, runtime_properties=props, version=ni.version)
    check(updated.runtime_properties.get('flow_check') == 'ok',
          'runtime property not stored: {0}'.format(
              updated.runtime_properties))
    check(updated.version > ni.version,
          'version not bumped: {0} -> {1}'.format(ni.version,
                                                  updated.version))
    again = client.node_instances.get(ni.id)
    check(again.runtime_properties.get('flow_check') == 'ok',
          'runtime property not persisted')
    try:
        client.node_instances.update(
            ni.id, runtime_properties=props, version=ni.version)
    except CloudifyClientError as e:
        check(e.status_code == 409,
              'stale-version update: expected 409, got {0}'.format(
                  e.status_code))
    else:
        raise CheckFailed('update with a stale version was accepted')


def wait_until_gone(get, resource_id, timeout):
    deadline = time.time() + timeout
    while True:
        try:
            get(resource_id)
        except CloudifyClientError as e:
            if e.status_code == 404:
                return
            raise
        if time.time() > deadline:
            raise CheckFailed('{0} still exists after {1}s'.format(
                resource_id, timeout))
        time.sleep(POLL_INTERVAL)


def upload_blueprint(client, args, blueprint_id):
    main_file = os.path.join(args.blueprint_dir, args.blueprint_file)
    check(os.path.isfile(main_file), 'no {0}'.format(main_file))
    if args.upload_mode == 'upload':
        return client.blueprints.upload(main_file, blueprint_id)
    tempdir = tempfile.mkdtemp()
    try:
        archive = os.path.join(tempdir, 'blueprint.tar.gz')
        with tarfile.open(archive, 'w:gz') as tar:
            tar.add(args.blueprint_dir, arcname=blueprint_id)
        return client.blueprints.publish_archive(
            archive, blueprint_id, blueprint_filename=args.blueprint_file)
    finally:
        shutil.rmtree(tempdir, ignore_errors=True)


def run(args):
    suffix = uuid.uuid4().hex[:8]
    blueprint_id = 'flow-bp-{0}'.format(suffix)
    deployment_id = 'flow-dep-{0}'.format(suffix)
    secret_key = 'flow-secret-{0}'.format(suffix)
    inputs = json.loads(args.inputs)

    client = make_client(args)
    version = client.manager.get_version()
    log('manager version: {0}'.format(version))
    check(version.get('version'), 'GET /api/version has no "version"')
    status = client.manager.get_status()
    log('manager status: {0}'.format(status.get('status')))
    check(status.get('status') == 'OK', 'status is not OK: {0}'.format(status))

    client.secrets.create(secret_key, 's3cr3t')
    check(client.secrets.get(secret_key).value == 's3cr3t',
          'secret value mismatch')
    check(secret_key in [s.key for s in client.secrets.list()],
          'secrets.list misses {0}'.format(secret_key))

    if args.use_token:
        token = client.tokens.create(description='cloudify_client_flow')
        check(token.value and token.id, 'token create: {0}'.format(token))
        check(client.tokens.get(token.id).id == token.id, 'token get')
        client = make_client(args, token=token.value)
        check(client.manager.get_status().get('status') == 'OK',
              'token-authenticated status call failed')
        log('using token {0}'.format(token.id))

    installed = deployed = uploaded = False
    try:
        blueprint = upload_blueprint(client, args, blueprint_id)
        uploaded = True
        log('blueprint uploaded: {0} state={1}'.format(
            blueprint.id, blueprint.state))
        check(blueprint.id == blueprint_id, 'blueprint id mismatch')
        check(blueprint.state == 'uploaded',
              'upload returned state {0!r}'.format(blueprint.state))
        check(blueprint_id in [b.id for b in client.blueprints.list(
            _include=['id', 'state'])], 'blueprints.list misses blueprint')
        check(client.blueprints.get(blueprint_id).main_file_name ==
              args.blueprint_file, 'main_file_name mismatch')

        deployment = client.deployments.create(
            blueprint_id, deployment_id, inputs=inputs)
        deployed = True
        log('deployment created: {0}'.format(deployment.id))
        check(deployment.id == deployment_id, 'deployment id mismatch')
        check(deployment.blueprint_id == blueprint_id,
              'deployment.blueprint_id mismatch')
        wait_for_deployment_environment(client, deployment_id, args.timeout)
        deployment = client.deployments.get(deployment_id)
        workflow_names = [w.name for w in deployment.workflows or []]
        check('install' in workflow_names and 'uninstall' in workflow_names,
              'deployment workflows: {0}'.format(workflow_names))
        check(deployment_id in [d.id for d in client.deployments.list(
            blueprint_id=blueprint_id)], 'deployments.list misses deployment')

        nodes = client.nodes.list(deployment_id=deployment_id)
        check(len(nodes) > 0, 'deployment has no nodes')
        log('nodes: {0}'.format([n.id for n in nodes]))
        check_node_instances(client, deployment_id, 'uninitialized')

        installed = True
        run_workflow(client, deployment_id, 'install', args.timeout)
        instances = check_node_instances(client, deployment_id, 'started')
        node_ids = {n.id for n in nodes}
        check({ni.node_id for ni in instances} <= node_ids,
              'node instances refer to unknown nodes')
        check_node_instance_update(client, instances[0].id)
        outputs = client.deployments.outputs.get(deployment_id)
        check(outputs.deployment_id == deployment_id, 'outputs deployment_id')
        check(isinstance(outputs.outputs, dict), 'outputs is not a dict')
        log('outputs: {0}'.format(outputs.outputs))

        if args.keep:
            log('--keep given: leaving {0} installed'.format(deployment_id))
            installed = deployed = uploaded = False
            return

        run_workflow(client, deployment_id, 'uninstall', args.timeout)
        installed = False
        check_node_instances(client, deployment_id, 'deleted')

        client.deployments.delete(deployment_id)
        wait_until_gone(client.deployments.get, deployment_id, args.timeout)
        deployed = False
        log('deployment deleted')

        client.blueprints.delete(blueprint_id)
        wait_until_gone(client.blueprints.get, blueprint_id, args.timeout)
        uploaded = False
        log('blueprint deleted')
    finally:
        _cleanup(client, args, installed, deployed, uploaded,
                 deployment_id, blueprint_id)
        try:
            make_client(args).secrets.delete(secret_key)
        except CloudifyClientError as e:
            log('cleanup: secret delete failed: {0}'.format(e))


def _cleanup(client, args, installed, deployed, uploaded,
             deployment_id, blueprint_id):
    """Best-effort cleanup after a failure; never raises."""
    try:
        if installed:
            execution = client.executions.start(deployment_id, 'uninstall')
            wait_for_execution(client, execution.id, args.timeout)
        if deployed:
            client.deployments.delete(deployment_id, force=True)
            wait_until_gone(client.deployments.get, deployment_id,
                            args.timeout)
        if uploaded:
            client.blueprints.delete(blueprint_id, force=True)
    except (CloudifyClientError, CheckFailed) as e:
        log('cleanup failed: {0}'.format(e))


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except CheckFailed as e:
        log('FAILED: {0}'.format(e))
        return 1
    except CloudifyClientError as e:
        log('CLIENT ERROR: {0} (status={1}, error_code={2})'.format(
            e, e.status_code, e.error_code))
        return 2
    except requests.exceptions.RequestException as e:
        log('CONNECTION ERROR: {0}'.format(e))
        return 2
    log('OK')
    return 0


if __name__ == '__main__':
    sys.exit(main())
