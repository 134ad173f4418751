// SPDX-License-Identifier: GPL-2.0
/*
 * p2pdma_oracle: expose the kernel's own P2PDMA decisions to the p2pdma test harness.
 *
 * A return probe on the file-local calc_map_type_and_dist() records, for every
 * call, the provider, the client, the map type it returned and the distance it
 * wrote.  Two debugfs files drive the exported entry points:
 *
 *   /sys/kernel/debug/p2pdma_oracle/distance
 *       write: "<verbose 0|1> <provider BDF> <client BDF> [<client BDF> ...]"
 *       read:  one "calc <provider> <client> <map type> <dist>" line per probe hit,
 *              then "distance <return value of pci_p2pdma_distance_many>"
 *
 *   /sys/kernel/debug/p2pdma_oracle/find
 *       write: "<rounds> <client BDF> [<client BDF> ...]"
 *       read:  "candidate <BDF> <distance>" for each device with published p2pmem
 *              (pci_p2pdma_distance_many, not verbose), then "chosen <BDF>|none"
 *              for every distinct result of <rounds> calls to pci_p2pmem_find_many
 *
 * Results are kept until the next write.  The harness serialises its queries.
 */
#include <linux/debugfs.h>
#include <linux/kprobes.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/pci-p2pdma.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/uaccess.h>

#define ORACLE_MAX_CLIENTS 32
#define ORACLE_OUT_SIZE (64 * 1024)

static DEFINE_MUTEX(oracle_lock);
static DEFINE_SPINLOCK(record_lock);
static char *out_buf;
static size_t out_len;
static bool recording;

static void out_printf(const char *fmt, ...) __printf(1, 2);
static void out_printf(const char *fmt, ...)
{
	va_list args;
	int n;

	if (out_len >= ORACLE_OUT_SIZE - 1)
		return;
	va_start(args, fmt);
	n = vscnprintf(out_buf + out_len, ORACLE_OUT_SIZE - out_len, fmt, args);
	va_end(args);
	out_len += n;
}

struct calc_args {
	struct pci_dev *provider;
	struct pci_dev *client;
	int *dist;
};

static int calc_entry(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	struct calc_args *a = (struct calc_args *)ri->data;

	a->provider = (struct pci_dev *)regs_get_kernel_argument(regs, 0);
	a->client = (struct pci_dev *)regs_get_kernel_argument(regs, 1);
	a->dist = (int *)regs_get_kernel_argument(regs, 2);
	return 0;
}

static int calc_return(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	struct calc_args *a = (struct calc_args *)ri->data;
	unsigned long flags;

	spin_lock_irqsave(&record_lock, flags);
	if (recording)
		out_printf("calc %s %s %ld %d\n", pci_name(a->provider), pci_name(a->client),
			   (long)regs_return_value(regs), *a->dist);
	spin_unlock_irqrestore(&record_lock, flags);
	return 0;
}

static struct kretprobe calc_probe = {
	.kp.symbol_name = "calc_map_type_and_dist",
	.entry_handler = calc_entry,
	.handler = calc_return,
	.data_size = sizeof(struct calc_args),
	.maxactive = 16,
};

static void set_recording(bool on)
{
	unsigned long flags;

	spin_lock_irqsave(&record_lock, flags);
	recording = on;
	spin_unlock_irqrestore(&record_lock, flags);
}

static struct pci_dev *get_bdf(const char *tok)
{
	unsigned int dom, bus, dev, fn;

	if (sscanf(tok, "%x:%x:%x.%x", &dom, &bus, &dev, &fn) != 4)
		return NULL;
	return pci_get_domain_bus_and_slot(dom, bus, PCI_DEVFN(dev, fn));
}

/* Split @buf into tokens; returns the count. */
static int tokenize(char *buf, char **tok, int max)
{
	int n = 0;
	char *s;

	while ((s = strsep(&buf, " \t\n")) != NULL) {
		if (!*s)
			continue;
		if (n == max)
			return -E2BIG;
		tok[n++] = s;
	}
	return n;
}

static void put_all(struct pci_dev **devs, int n)
{
	int i;

	for (i = 0; i < n; i++)
		pci_dev_put(devs[i]);
}

static int do_distance(char **tok, int ntok)
{
	struct pci_dev *provider, *clients[ORACLE_MAX_CLIENTS];
	struct device *cdevs[ORACLE_MAX_CLIENTS];
	int verbose, i, n = 0, ret;

	if (ntok < 3 || kstrtoint(tok[0], 10, &verbose))
		return -EINVAL;
	provider = get_bdf(tok[1]);
	if (!provider)
		return -ENODEV;
	for (i = 2; i < ntok; i++) {
		clients[n] = get_bdf(tok[i]);
		if (!clients[n]) {
			put_all(clients, n);
			pci_dev_put(provider);
			return -ENODEV;
		}
		cdevs[n] = &clients[n]->dev;
		n++;
	}
	set_recording(true);
	ret = pci_p2pdma_distance_many(provider, cdevs, n, verbose != 0);
	set_recording(false);
	out_printf("distance %d\n", ret);
	put_all(clients, n);
	pci_dev_put(provider);
	return 0;
}

static int do_find(char **tok, int ntok)
{
	struct pci_dev *clients[ORACLE_MAX_CLIENTS], *pdev = NULL, *found;
	struct pci_dev *chosen[ORACLE_MAX_CLIENTS];
	struct device *cdevs[ORACLE_MAX_CLIENTS];
	int rounds, i, j, n = 0, nchosen = 0, none = 0;

	if (ntok < 2 || kstrtoint(tok[0], 10, &rounds) || rounds < 1)
		return -EINVAL;
	for (i = 1; i < ntok; i++) {
		clients[n] = get_bdf(tok[i]);
		if (!clients[n]) {
			put_all(clients, n);
			return -ENODEV;
		}
		cdevs[n] = &clients[n]->dev;
		n++;
	}
	for_each_pci_dev(pdev) {
		if (!pci_has_p2pmem(pdev))
			continue;
		out_printf("candidate %s %d\n", pci_name(pdev),
			   pci_p2pdma_distance_many(pdev, cdevs, n, false));
	}
	for (i = 0; i < rounds; i++) {
		found = pci_p2pmem_find_many(cdevs, n);
		if (!found) {
			none = 1;
			continue;
		}
		for (j = 0; j < nchosen; j++)
			if (chosen[j] == found)
				break;
		if (j < nchosen || nchosen == ORACLE_MAX_CLIENTS) {
			pci_dev_put(found);
			continue;
		}
		chosen[nchosen++] = found;
	}
	for (j = 0; j < nchosen; j++)
		out_printf("chosen %s\n", pci_name(chosen[j]));
	if (none)
		out_printf("chosen none\n");
	put_all(chosen, nchosen);
	put_all(clients, n);
	return 0;
}

static ssize_t query_write(struct file *file, const char __user *ubuf, size_t count,
			   loff_t *ppos, int (*fn)(char **, int))
{
	char *tok[ORACLE_MAX_CLIENTS + 2];
	char *buf;
	int ntok, ret;

	if (count > 4096)
		return -E2BIG;
	buf = memdup_user_nul(ubuf, count);
	if (IS_ERR(buf))
		return PTR_ERR(buf);
	mutex_lock(&oracle_lock);
	out_len = 0;
	out_buf[0] = 0;
	ntok = tokenize(buf, tok, ARRAY_SIZE(tok));
	ret = ntok < 0 ? ntok : fn(tok, ntok);
	mutex_unlock(&oracle_lock);
	kfree(buf);
	return ret ? ret : count;
}

static ssize_t distance_write(struct file *file, const char __user *ubuf, size_t count,
			      loff_t *ppos)
{
	return query_write(file, ubuf, count, ppos, do_distance);
}

static ssize_t find_write(struct file *file, const char __user *ubuf, size_t count,
			  loff_t *ppos)
{
	return query_write(file, ubuf, count, ppos, do_find);
}

static ssize_t result_read(struct file *file, char __user *ubuf, size_t count, loff_t *ppos)
{
	ssize_t ret;

	mutex_lock(&oracle_lock);
	ret = simple_read_from_buffer(ubuf, count, ppos, out_buf, out_len);
	mutex_unlock(&oracle_lock);
	return ret;
}

static const struct file_operations distance_fops = {
	.owner = THIS_MODULE,
	.write = distance_write,
	.read = result_read,
	.llseek = default_llseek,
};

static const struct file_operations find_fops = {
	.owner = THIS_MODULE,
	.write = find_write,
	.read = result_read,
	.llseek = default_llseek,
};

static struct dentry *oracle_dir;

static int __init oracle_init(void)
{
	int ret;

	out_buf = kzalloc(ORACLE_OUT_SIZE, GFP_KERNEL);
	if (!out_buf)
		return -ENOMEM;
	ret = register_kretprobe(&calc_probe);
	if (ret) {
		pr_err("p2pdma_oracle: cannot probe calc_map_type_and_dist: %d\n", ret);
		kfree(out_buf);
		return ret;
	}
	oracle_dir = debugfs_create_dir("p2pdma_oracle", NULL);
	debugfs_create_file("distance", 0600, oracle_dir, NULL, &distance_fops);
	debugfs_create_file("find", 0600, oracle_dir, NULL, &find_fops);
	return 0;
}

static void __exit oracle_exit(void)
{
	debugfs_remove_recursive(oracle_dir);
	unregister_kretprobe(&calc_probe);
	kfree(out_buf);
}

module_init(oracle_init);
module_exit(oracle_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("p2pdma test oracle: records the kernel's P2PDMA map type and distance");
