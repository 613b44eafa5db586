"""What the workflow's modules share, and nothing outside signup.workflow calls:

    rows       the names of states and events, the exceptions, row locks, the timeline,
               follow-up work after commit
    ledger     one mechanism for both ledgers (emails, webhook deliveries): claim under a
               lease, record, retry with backoff, dead-letter, re-drive, find what is stuck
    timers     when the next reminder or the expiry is due, and handing it to the broker
    queues     how far each queue's workers have got (the probes), which tells a lost
               task from one waiting its turn
    outage     a provider down for everyone: emails held, then all sent when it is back
    budget     one mailbox's budget and reminder chain, and a new signup's first contact
    codes      when the code the emails carry is void, and the one that replaces it
    clock      the database's clock, which reminders are planned on
    endings    how a pending signup ends (expired, cancelled, undeliverable), and who
               cancelled it
    announce   telling others: a signal and a webhook delivery per transition

Names here are public within the package; the package's own surface is signup.workflow.
"""
